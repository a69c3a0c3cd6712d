//! Runs a scenario end to end: raises the open-files limit, starts a server per burst with `--spawn` (or uses
//! `--target`), runs the bursts, and rewrites the report after each one, so that a long run that fails half way
//! keeps what it measured.

use crate::burst::{self, Plan};
use crate::cli::{
    BurstArgs, Cli, FlashSaleArgs, Global, PeakArgs, PlanArgs, Scenario, SweepArgs, ThroughputArgs,
};
use crate::client::{Target, source_addresses_for};
use crate::flash::{self, SEATED_CAPACITY_MAX};
use crate::flash_page;
use crate::html;
use crate::limits::{DESCRIPTORS_SPARE, raise_open_files};
use crate::model::{self, Calibration, Question};
use crate::peak::PeakSearch;
use crate::report::{
    self, BurstReport, Machine, PeakReport, PlanReport, Report, Sample, ServerRun, SpawnedServers,
    ThroughputReport, ThroughputRun, Verification,
};
use crate::server::{Spawned, Tuning, admin_token, serve_flags};
use crate::study;
use crate::throughput;
use std::path::PathBuf;
use std::time::Duration;

/// Runs the scenario; `Ok(true)` when every burst's counts added up.
pub async fn run(cli: Cli) -> Result<bool, String> {
    let concurrency_max = match &cli.command {
        Scenario::Burst(args) => in_flight(args.concurrency, args.users),
        Scenario::SweepPayment(args) => in_flight(args.concurrency, args.users),
        Scenario::Peak(args) => in_flight(args.concurrency, args.max_users),
        Scenario::Plan(args) => {
            if args.service_rate.is_some() && !args.verify {
                return plan_offline(args, &cli.global);
            }
            in_flight(args.concurrency, args.orders.max(args.calibration_orders))
        }
        Scenario::FlashSale(args) => in_flight(args.concurrency, args.buyers) + args.subscribers,
        Scenario::Throughput(args) => {
            check_throughput(&cli.global)?;
            args.connections
        }
        Scenario::ServeBare(args) => return crate::bare::serve(args).await.map(|()| true),
    };
    let mut runner = Runner::new(cli.global, scenario_name(&cli.command), concurrency_max)?;
    match cli.command {
        Scenario::Burst(args) => runner.burst(args).await,
        Scenario::SweepPayment(args) => runner.sweep(args).await,
        Scenario::Peak(args) => runner.peak(args).await,
        Scenario::Plan(args) => runner.plan(args).await,
        Scenario::FlashSale(args) => runner.flash_sale(args).await,
        Scenario::Throughput(args) => runner.throughput(args).await,
        Scenario::ServeBare(_) => unreachable!("served above"),
    }
}

fn scenario_name(scenario: &Scenario) -> &'static str {
    match scenario {
        Scenario::Burst(_) => "burst",
        Scenario::SweepPayment(_) => "sweep-payment",
        Scenario::Peak(_) => "peak",
        Scenario::Plan(_) => "plan",
        Scenario::FlashSale(_) => "flash-sale",
        Scenario::Throughput(_) => "throughput",
        Scenario::ServeBare(_) => "serve-bare",
    }
}

struct Runner {
    global: Global,
    admin_token: String,
    report: Report,
    out: PathBuf,
    source_addresses: u32,
    bursts_run: u64,
    run_id: String,
}

impl Runner {
    fn new(global: Global, scenario: &str, concurrency_max: u64) -> Result<Self, String> {
        let open_files_max = raise_open_files(concurrency_max + DESCRIPTORS_SPARE);
        if open_files_max < concurrency_max + DESCRIPTORS_SPARE {
            eprintln!(
                "warning: {open_files_max} open files allowed, fewer than {} requests in flight need; \
                 connections beyond it fail (raise the hard limit: ulimit -Hn)",
                concurrency_max
            );
        }
        let admin_token = match (&global.spawn, &global.admin_token) {
            (Some(_), _) => admin_token(),
            (None, Some(token)) => token.clone(),
            (None, None) => {
                return Err("give --admin-token (or BOXOFFICE_ADMIN_TOKEN), or --spawn".into());
            }
        };
        let started_at = time::OffsetDateTime::now_utc();
        let out = global.out.clone().unwrap_or_else(|| {
            let stamp = started_at
                .format(time::macros::format_description!(
                    "[year][month][day]T[hour][minute][second]Z"
                ))
                .unwrap_or_default();
            PathBuf::from("target/load").join(format!("{scenario}-{stamp}"))
        });
        std::fs::create_dir_all(&out)
            .map_err(|error| format!("cannot create {}: {error}", out.display()))?;
        let source_addresses = global
            .source_addresses
            .unwrap_or_else(|| source_addresses_for(concurrency_max));
        let report = Report {
            scenario: scenario.to_owned(),
            command: command_line(),
            started_at: started_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            target: if global.spawn.is_some() {
                "spawned".into()
            } else {
                global.target.clone()
            },
            spawned: global.spawn.as_ref().map(|binary| SpawnedServers {
                binary: binary.display().to_string(),
                runs: Vec::new(),
            }),
            machine: Machine {
                cores: machine_cores(),
                open_files_max,
                source_addresses,
            },
            burst: None,
            points: Vec::new(),
            peak: None,
            plan: None,
            throughput: None,
            flash_sale: None,
            study: study::FIGURES,
        };
        Ok(Self {
            global,
            admin_token,
            report,
            out,
            source_addresses,
            bursts_run: 0,
            run_id: format!("{:08x}", rand::random::<u32>()),
        })
    }

    /// Runs one burst of `users` orders, `concurrency` at once, on a fresh server with `--spawn`.
    async fn one_burst(
        &mut self,
        users: u64,
        concurrency: u64,
        capacity: u64,
        payment_latency_ms: Option<u64>,
    ) -> Result<(BurstReport, Vec<Sample>), String> {
        let plan = Plan {
            users,
            concurrency,
            capacity,
            payment_latency_ms,
            shards: self.global.shards,
            prefix: format!("load-{}-{}-", self.run_id, self.bursts_run),
        };
        self.bursts_run += 1;
        eprintln!(
            "burst {}: {users} orders, {concurrency} at once, provider latency {}",
            self.bursts_run,
            payment_latency_ms.map_or("as the target runs".into(), |ms| format!("{ms} ms"))
        );
        let timeout = Duration::from_secs(self.global.request_timeout_s);
        let Some(binary) = self.global.spawn.clone() else {
            let target = Target::new(&self.global.target, self.source_addresses, timeout)?;
            return burst::run(&target, &self.admin_token, &plan).await;
        };
        let tuning = Tuning {
            durability: self.global.durability.clone(),
            payment_concurrency: self.global.payment_concurrency,
            extra: self.global.server_args.clone(),
        };
        let flags = serve_flags(&tuning, users, concurrency, payment_latency_ms.unwrap_or(0));
        let (measured, exit) = self
            .on_server(&binary, &flags, async |target| {
                burst::run(&target, &self.admin_token, &plan).await
            })
            .await?;
        self.record_server(flags, exit);
        measured
    }

    async fn burst(&mut self, args: BurstArgs) -> Result<bool, String> {
        let concurrency = in_flight(args.concurrency, args.users);
        let capacity = args.capacity.unwrap_or(args.users);
        let (burst, samples) = self
            .one_burst(args.users, concurrency, capacity, args.payment_latency_ms)
            .await?;
        print_burst(&burst);
        let title = burst_title(&burst);
        let section = html::burst_section(&title, &burst, &samples);
        let holds = burst.invariants.hold;
        self.report.burst = Some(burst);
        self.write(&[section], Some(&samples))?;
        Ok(holds)
    }

    async fn sweep(&mut self, args: SweepArgs) -> Result<bool, String> {
        if self.global.spawn.is_none() {
            return Err(
                "sweep-payment needs --spawn: the provider latency is a flag of the server".into(),
            );
        }
        let concurrency = in_flight(args.concurrency, args.users);
        let mut sections = Vec::new();
        for latency_ms in args.latencies_ms {
            let (burst, samples) = self
                .one_burst(args.users, concurrency, args.users, Some(latency_ms))
                .await?;
            print_burst(&burst);
            sections.push(html::burst_section(&burst_title(&burst), &burst, &samples));
            self.report.points.push(burst);
            let mut page = vec![
                html::figures_table(&self.report.points),
                html::sweep_chart(&self.report.points).render(),
            ];
            page.extend(sections.iter().cloned());
            self.write(&page, None)?;
        }
        Ok(self.report.points.iter().all(|p| p.invariants.hold))
    }

    async fn peak(&mut self, args: PeakArgs) -> Result<bool, String> {
        if !(args.precision > 0.0 && args.precision < 1.0) {
            return Err("--precision must be between 0 and 1".into());
        }
        if args.start_users > args.max_users {
            return Err("--start-users must not exceed --max-users".into());
        }
        let mut search = PeakSearch::new(args.start_users, args.max_users, args.precision);
        let slo_ms = args.slo_s * 1000.0;
        let mut sections = Vec::new();
        while let Some(users) = search.next() {
            let concurrency = in_flight(args.concurrency, users);
            let (burst, samples) = self
                .one_burst(users, concurrency, users, Some(args.payment_latency_ms))
                .await?;
            let held = burst.holds(slo_ms);
            print_burst(&burst);
            eprintln!(
                "{} orders {} the objective of {} s",
                users,
                if held { "hold" } else { "miss" },
                args.slo_s
            );
            search.record(users, held);
            sections.push(html::burst_section(&burst_title(&burst), &burst, &samples));
            self.report.points.push(burst);
            self.report.peak = Some(PeakReport {
                slo_s: args.slo_s,
                peak: search.result(),
            });
            let mut page = vec![
                peak_summary(&search, args.slo_s),
                html::figures_table(&self.report.points),
                html::peak_chart(&self.report.points, args.slo_s).render(),
            ];
            page.extend(sections.iter().cloned());
            self.write(&page, None)?;
        }
        println!("{}", peak_line(&search, args.slo_s));
        Ok(self.report.points.iter().all(|p| p.invariants.hold))
    }

    async fn plan(&mut self, args: PlanArgs) -> Result<bool, String> {
        let question = question_of(&args, &self.global);
        let cores = args.cores.unwrap_or(self.report.machine.cores as u32);
        let mut sections = Vec::new();
        let (calibration, calibrated) = match (args.service_rate, args.base_latency_ms) {
            (Some(rate), Some(base_ms)) => (given(rate, base_ms, args.phase_share, cores)?, false),
            _ => {
                let orders = args.calibration_orders;
                let concurrency = in_flight(args.concurrency, orders);
                let (fast, samples) = self.one_burst(orders, concurrency, orders, Some(0)).await?;
                print_burst(&fast);
                sections.push(html::burst_section(
                    &format!("Calibration 1: {}", burst_title(&fast)),
                    &fast,
                    &samples,
                ));
                check_calibration(&fast)?;
                // Twice the time the whole burst took without a provider: every order has had its first phase
                // before the first payment returns, so they come back together and queue for the second.
                let drain_ms = fast.latency_ms.max - fast.latency_ms.min;
                let slow_ms = ((2.0 * drain_ms).ceil() as u64).max(200);
                let (slow, samples) = self
                    .one_burst(orders, concurrency, orders, Some(slow_ms))
                    .await?;
                print_burst(&slow);
                sections.push(html::burst_section(
                    &format!("Calibration 2: {}", burst_title(&slow)),
                    &slow,
                    &samples,
                ));
                check_calibration(&slow)?;
                let calibration = calibrate(&fast, &slow, slow_ms, cores);
                self.report.points.push(fast);
                self.report.points.push(slow);
                (calibration, true)
            }
        };
        let plan = plan_report(calibration, calibrated, question);
        let prediction = plan.prediction;
        self.report.plan = Some(plan);
        self.write_plan(&sections)?;
        if !args.verify {
            return Ok(self.report.points.iter().all(|p| p.invariants.hold));
        }
        let concurrency = in_flight(args.concurrency, args.orders);
        let (burst, samples) = self
            .one_burst(
                args.orders,
                concurrency,
                args.orders,
                Some(args.payment_latency_ms),
            )
            .await?;
        print_burst(&burst);
        let verification = verify(&prediction, &burst);
        println!(
            "model error (measured - predicted) / measured: longest {:+.1}%, mean {:+.1}%, throughput {:+.1}%",
            verification.max_error_percent,
            verification.mean_error_percent,
            verification.throughput_error_percent
        );
        sections.push(html::burst_section(
            &format!("Verification: {}", burst_title(&burst)),
            &burst,
            &samples,
        ));
        self.report.points.push(burst);
        if let Some(plan) = &mut self.report.plan {
            plan.verification = Some(verification);
        }
        self.write_plan(&sections)?;
        Ok(self.report.points.iter().all(|p| p.invariants.hold))
    }

    fn write_plan(&self, sections: &[String]) -> Result<(), String> {
        let mut page = Vec::new();
        if let Some(plan) = &self.report.plan {
            page.push(html::plan_section(plan));
        }
        page.extend(sections.iter().cloned());
        self.write(&page, None)
    }

    fn write(&self, sections: &[String], samples: Option<&[Sample]>) -> Result<(), String> {
        let page = html::page(&self.report, sections);
        report::write(&self.out, &self.report, &page, samples)?;
        println!("report: {}", self.out.join("report.html").display());
        Ok(())
    }
}

/// `throughput`: the durable node, the node without durability, the bare endpoint, one after the other so that they
/// never share the cores.
impl Runner {
    async fn throughput(&mut self, args: ThroughputArgs) -> Result<bool, String> {
        let shape = throughput::Shape {
            connections: args.connections,
            warmup: Duration::from_secs(args.warmup_s),
            measured: Duration::from_secs(args.seconds),
        };
        let mut section = ThroughputReport {
            connections: args.connections,
            warmup_s: args.warmup_s,
            seconds: args.seconds,
            ..ThroughputReport::default()
        };
        section.durable = Some(self.throughput_node("fsync", &shape).await?);
        self.record_throughput(&mut section)?;
        section.durability_none = Some(self.throughput_node("none", &shape).await?);
        self.record_throughput(&mut section)?;
        section.bare = Some(self.throughput_bare(&shape).await?);
        self.record_throughput(&mut section)?;
        println!("{}", throughput::summary_line(&section));
        Ok(section
            .runs()
            .all(|run| run.invariants.as_ref().is_none_or(|counts| counts.hold)))
    }

    /// Prints the run measured last and rewrites the report with every run so far.
    fn record_throughput(&mut self, section: &mut ThroughputReport) -> Result<(), String> {
        section.compare();
        if let Some(run) = section.runs().last() {
            println!("{}", throughput::run_line(run));
        }
        self.report.throughput = Some(section.clone());
        self.write(&[html::throughput_section(section)], None)
    }

    /// boxoffice with `--durability DURABILITY` and a 0 ms provider.
    async fn throughput_node(
        &mut self,
        durability: &str,
        shape: &throughput::Shape,
    ) -> Result<ThroughputRun, String> {
        let binary = self.global.spawn.clone().ok_or(THROUGHPUT_NEEDS_SPAWN)?;
        let mut extra = self.global.server_args.clone();
        extra.extend([
            THROUGHPUT_TICKETS_FLAG.to_owned(),
            throughput::TICKETS_PER_BUYER_MAX.to_string(),
        ]);
        let tuning = Tuning {
            durability: durability.to_owned(),
            payment_concurrency: self.global.payment_concurrency,
            extra,
        };
        let flags = serve_flags(&tuning, shape.connections, shape.connections, 0);
        let endpoint = format!("boxoffice serve --durability {durability}");
        announce(&endpoint, shape);
        let prefix = format!("load-{}-{}-", self.run_id, self.bursts_run);
        self.bursts_run += 1;
        let (measured, exit) = self
            .on_server(&binary, &flags, async |target| {
                throughput::boxoffice(
                    &target,
                    &self.admin_token,
                    &prefix,
                    self.global.shards,
                    shape,
                )
                .await
            })
            .await?;
        self.record_server(flags.clone(), exit.clone());
        let (tally, invariants) = measured?;
        let measured_s = shape.measured.as_secs_f64();
        Ok(tally.into_run(endpoint, flags, measured_s, Some(invariants), exit))
    }

    /// The bare axum endpoint: this binary's `serve-bare`.
    async fn throughput_bare(
        &mut self,
        shape: &throughput::Shape,
    ) -> Result<ThroughputRun, String> {
        let binary = std::env::current_exe().map_err(|error| {
            format!("cannot find this program to start the bare endpoint: {error}")
        })?;
        let endpoint = "boxoffice-load serve-bare (bare axum)".to_owned();
        announce(&endpoint, shape);
        let prefix = format!("bare-{}-", self.run_id);
        let (measured, exit) = self
            .on_server(&binary, &[], async |target| {
                throughput::bare(&target, &prefix, shape).await
            })
            .await?;
        let measured_s = shape.measured.as_secs_f64();
        Ok(measured?.into_run(endpoint, Vec::new(), measured_s, None, exit))
    }

    /// Notes a server the run started and how it ended, for the report.
    fn record_server(&mut self, flags: Vec<String>, exit: String) {
        if let Some(spawned) = &mut self.report.spawned {
            spawned.runs.push(ServerRun { flags, exit });
        }
    }

    /// Starts `binary serve` with `flags`, runs `measure` against it and stops it: what was measured, and how the
    /// server ended.
    async fn on_server<T>(
        &self,
        binary: &std::path::Path,
        flags: &[String],
        measure: impl AsyncFnOnce(Target) -> Result<T, String>,
    ) -> Result<(Result<T, String>, String), String> {
        let log = self.out.join("server.log");
        let server = Spawned::start(binary, flags, &self.admin_token, &log).await?;
        let timeout = Duration::from_secs(self.global.request_timeout_s);
        let measured = match Target::new(&server.base, self.source_addresses, timeout) {
            Ok(target) => measure(target).await,
            Err(error) => Err(error),
        };
        Ok((measured, server.stop().await))
    }
}

/// Says which loop starts.
fn announce(endpoint: &str, shape: &throughput::Shape) {
    eprintln!(
        "throughput: {endpoint}, {} connections, {} s warm-up, {} s measured",
        shape.connections,
        shape.warmup.as_secs(),
        shape.measured.as_secs()
    );
}

const THROUGHPUT_NEEDS_SPAWN: &str = "throughput needs --spawn PATH_TO_BOXOFFICE: it starts the servers it compares, one after the other";
/// The server flag `throughput` sets itself, so that no order is refused for the per-user limit.
const THROUGHPUT_TICKETS_FLAG: &str = "--max-tickets-per-user";

/// Refuses a `throughput` run it cannot carry out: without --spawn, or with a --server-arg it sets itself.
fn check_throughput(global: &Global) -> Result<(), String> {
    if global.spawn.is_none() {
        return Err(THROUGHPUT_NEEDS_SPAWN.into());
    }
    if global
        .server_args
        .iter()
        .any(|arg| arg.split('=').next() == Some(THROUGHPUT_TICKETS_FLAG))
    {
        return Err(format!(
            "throughput sets {THROUGHPUT_TICKETS_FLAG} itself ({} per buyer, {} buyers): leave it out of \
             --server-arg",
            throughput::TICKETS_PER_BUYER_MAX,
            throughput::BUYERS
        ));
    }
    Ok(())
}

fn burst_title(burst: &BurstReport) -> String {
    format!(
        "Burst: {} orders, {} at once, provider {}",
        burst.orders,
        burst.parameters.concurrency,
        burst
            .parameters
            .payment_latency_ms
            .map_or("latency unknown".into(), |ms| format!("{ms} ms"))
    )
}

fn peak_line(search: &PeakSearch, slo_s: f64) -> String {
    let peak = search.result();
    match (peak.largest_held, peak.bounded_by_max) {
        (Some(users), true) => format!(
            "peak: every burst up to --max-users ({users}) held {slo_s} s; the peak is higher"
        ),
        (Some(users), false) => format!(
            "peak: {users} simultaneous orders held {slo_s} s; {} did not",
            peak.smallest_failed.unwrap_or_default()
        ),
        (None, _) => format!("peak: no burst held {slo_s} s"),
    }
}

fn peak_summary(search: &PeakSearch, slo_s: f64) -> String {
    format!(
        "<h2>Peak</h2><p>{} (the study: {} within {} s).</p>",
        crate::svg::escape(&peak_line(search, slo_s)),
        study::PEAK_ORDERS,
        study::PEAK_SLO_S
    )
}

fn print_burst(burst: &BurstReport) {
    let l = &burst.latency_ms;
    println!(
        "{} orders ({} at once): ok {}, sold_out {}, errors {} {:?}; latency s min {:.3} mean {:.3} p50 {:.3} \
         p90 {:.3} p99 {:.3} max {:.3}; {:.1} orders/s; counts {}",
        burst.orders,
        burst.parameters.concurrency,
        burst.ok,
        burst.sold_out,
        burst.errors,
        burst.errors_by_kind,
        l.min / 1000.0,
        l.mean / 1000.0,
        l.p50 / 1000.0,
        l.p90 / 1000.0,
        l.p99 / 1000.0,
        l.max / 1000.0,
        burst.throughput_per_s,
        if burst.invariants.hold {
            "add up".to_owned()
        } else {
            format!("BROKEN: {}", burst.invariants.problems.join("; "))
        }
    );
    if let Some(tcp) = burst.kernel_tcp {
        println!(
            "  kernel (whole machine): {} accept queue overflows, {} SYN retransmits, {} SYN cookies",
            tcp.listen_overflows, tcp.syn_retransmits, tcp.syncookies_sent
        );
    }
}

/// The command line as typed, for the report, with an admin token given on it masked.
fn command_line() -> String {
    let mut words = Vec::new();
    let mut hide_next = false;
    for word in std::env::args() {
        if hide_next {
            words.push("***".to_owned());
            hide_next = false;
        } else if word == "--admin-token" {
            words.push(word);
            hide_next = true;
        } else if word.starts_with("--admin-token=") {
            words.push("--admin-token=***".to_owned());
        } else {
            words.push(word);
        }
    }
    words.join(" ")
}

fn question_of(args: &PlanArgs, global: &Global) -> Question {
    Question {
        orders: args.orders,
        payment_latency_s: args.payment_latency_ms as f64 / 1000.0,
        payment_concurrency: global
            .payment_concurrency
            .map_or(PAYMENT_CONCURRENCY_DEFAULT, u64::from),
        slo_s: args.slo_s,
    }
}

/// `boxoffice serve --payment-concurrency`'s default, what a node runs with unless told.
const PAYMENT_CONCURRENCY_DEFAULT: u64 = 16_384;

fn given(rate: f64, base_ms: f64, phase_share: f64, cores: u32) -> Result<Calibration, String> {
    if !(rate > 0.0 && rate.is_finite() && base_ms >= 0.0 && base_ms.is_finite()) {
        return Err("--service-rate must be positive and --base-latency-ms not negative".into());
    }
    if !(0.5..=1.0).contains(&phase_share) {
        return Err("--phase-share is the longer phase's share: 0.5 to 1".into());
    }
    Ok(Calibration {
        service_rate_per_s: rate,
        cores,
        base_latency_s: base_ms / 1000.0,
        phase_s: phase_share / rate,
    })
}

fn check_calibration(burst: &BurstReport) -> Result<(), String> {
    if !burst.invariants.hold || burst.errors > 0 || burst.ok == 0 {
        return Err("a calibration burst failed (errors or broken counts): see the report".into());
    }
    Ok(())
}

/// The model's parameters from two bursts of the same size: with a 0 ms provider (`fast`) one order alone takes
/// about the shortest response and the node drained `ok / (longest - shortest)` orders per second; with a provider
/// of `slow_ms` the tail after it is the longer phase, `(longest - shortest - slow) / ok` per order.
fn calibrate(fast: &BurstReport, slow: &BurstReport, slow_ms: u64, cores: u32) -> Calibration {
    let base_s = fast.latency_ms.min / 1000.0;
    let drain_s = (fast.latency_ms.max - fast.latency_ms.min) / 1000.0;
    let rate = fast.ok as f64 / drain_s.max(0.001);
    let tail_s = (slow.latency_ms.max - slow.latency_ms.min - slow_ms as f64).max(0.0) / 1000.0;
    Calibration {
        service_rate_per_s: rate,
        cores,
        base_latency_s: base_s,
        // At least half an order's work is in its longer phase, and at most all of it.
        phase_s: (tail_s / slow.ok as f64).clamp(0.5 / rate, 1.0 / rate),
    }
}

fn verify(prediction: &model::Prediction, burst: &BurstReport) -> Verification {
    let measured_max_s = burst.latency_ms.max / 1000.0;
    let measured_mean_s = burst.latency_ms.mean / 1000.0;
    Verification {
        measured_max_s,
        measured_mean_s,
        measured_throughput_per_s: burst.ok_per_s,
        max_error_percent: model::error_percent(prediction.max_latency_s, measured_max_s),
        mean_error_percent: model::error_percent(prediction.mean_latency_s, measured_mean_s),
        throughput_error_percent: model::error_percent(prediction.throughput_per_s, burst.ok_per_s),
    }
}

fn plan_lines(
    calibration: &Calibration,
    question: &Question,
    prediction: &model::Prediction,
) -> String {
    let sizing = match (
        prediction.required_cores,
        prediction.required_payment_concurrency,
        prediction.required_nodes,
    ) {
        (Some(cores), Some(slots), Some(nodes)) => format!(
            "to answer every order within {} s: {:.0} orders/s, {cores} cores ({nodes} node(s) of {} cores), \
             {cores} shards or more, {slots} payment calls in flight",
            question.slo_s,
            prediction.required_throughput_per_s.unwrap_or_default(),
            calibration.cores
        ),
        _ => format!(
            "no size answers within {} s: one order alone takes {:.2} s",
            question.slo_s,
            calibration.base_latency_s + question.payment_latency_s
        ),
    };
    format!(
        "calibration: {:.0} orders/s on {} cores, {:.0} ms for one order, {:.0} us per order in the longer phase\n\
         prediction for {} orders at once, provider {:.0} ms, {} payment slots: {:.0} orders/s (bound by {}), \
         longest {:.2} s, mean {:.2} s, objective {} s {}\n{sizing}",
        calibration.service_rate_per_s,
        calibration.cores,
        calibration.base_latency_s * 1000.0,
        calibration.phase_s * 1e6,
        question.orders,
        question.payment_latency_s * 1000.0,
        question.payment_concurrency,
        prediction.throughput_per_s,
        prediction.bottleneck,
        prediction.max_latency_s,
        prediction.mean_latency_s,
        question.slo_s,
        if prediction.meets_slo {
            "met"
        } else {
            "missed"
        },
    )
}

/// The model's answer for `question`, printed, as the report records it (unverified yet).
fn plan_report(calibration: Calibration, calibrated: bool, question: Question) -> PlanReport {
    let prediction = model::predict(&calibration, &question);
    println!("{}", plan_lines(&calibration, &question, &prediction));
    PlanReport {
        calibration,
        calibrated,
        question,
        prediction,
        verification: None,
    }
}

fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Orders in flight at most in a burst of `orders`: `--concurrency`, or all at once.
fn in_flight(concurrency: Option<u64>, orders: u64) -> u64 {
    concurrency.unwrap_or(orders).min(orders)
}

/// `plan` with the service rates given and no verification: no server, no burst, only the model.
fn plan_offline(args: &PlanArgs, global: &Global) -> Result<bool, String> {
    let calibration = given(
        args.service_rate.unwrap_or_default(),
        args.base_latency_ms.unwrap_or_default(),
        args.phase_share,
        args.cores.unwrap_or(machine_cores() as u32),
    )?;
    let plan = plan_report(calibration, false, question_of(args, global));
    println!(
        "{}",
        serde_json::to_string_pretty(&plan).map_err(|error| error.to_string())?
    );
    Ok(true)
}

/// `flash-sale`: one sale, on a server of its own with --spawn.
impl Runner {
    async fn flash_sale(&mut self, args: FlashSaleArgs) -> Result<bool, String> {
        let layout = flash::Layout {
            sections: args.sections,
            rows: args.rows,
            seats_per_row: args.seats_per_row,
        };
        if u64::from(layout.seats()) > SEATED_CAPACITY_MAX {
            return Err(format!(
                "{} seats: a seated concert has at most {SEATED_CAPACITY_MAX}",
                layout.seats()
            ));
        }
        if self.global.spawn.is_some() && args.think_ms >= args.hold_ttl_s * 1000 {
            return Err(format!(
                "--think-ms {} is not shorter than the hold (--hold-ttl-s {}): buyers would lose their holds while \
                 they think",
                args.think_ms, args.hold_ttl_s
            ));
        }
        let concurrency = in_flight(args.concurrency, args.buyers);
        let plan = flash::Plan {
            layout,
            buyers: args.buyers,
            concurrency,
            subscribers: args.subscribers,
            group_max: args.group_max,
            attempts: args.attempts,
            shares: flash::Shares {
                decline: args.decline_share,
                cancel: args.cancel_share,
                abandon: args.abandon_share,
                late: args.late_share,
            },
            think_ms: args.think_ms,
            shards: self.global.shards,
            payment_latency_ms: self.global.spawn.as_ref().map(|_| args.payment_latency_ms),
            prefix: format!("flash-{}-", self.run_id),
        };
        plan.shares.intents(0)?;
        let timeout = Duration::from_secs(self.global.request_timeout_s);
        let run = match self.global.spawn.clone() {
            None => {
                let target = Target::new(&self.global.target, self.source_addresses, timeout)?;
                flash::run(&target, &self.admin_token, &plan).await?
            }
            Some(binary) => {
                let tuning = Tuning {
                    durability: self.global.durability.clone(),
                    payment_concurrency: self.global.payment_concurrency,
                    extra: self.global.server_args.clone(),
                };
                let mut flags = serve_flags(
                    &tuning,
                    args.buyers,
                    concurrency + args.subscribers,
                    args.payment_latency_ms,
                );
                flags.extend(["--hold-ttl-s".to_owned(), args.hold_ttl_s.to_string()]);
                let (measured, exit) = self
                    .on_server(&binary, &flags, async |target| {
                        flash::run(&target, &self.admin_token, &plan).await
                    })
                    .await?;
                self.record_server(flags, exit);
                measured?
            }
        };
        println!("{}", flash_page::summary(&run.report));
        let holds = run.report.invariants.hold;
        let section = flash_page::html_section(&run);
        self.report.flash_sale = Some(run.report);
        self.write(&[section], None)?;
        Ok(holds)
    }
}

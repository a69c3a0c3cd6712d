//! Runs a scenario end to end: raises the open-files limit, starts a server (or with `--spawn-cluster` a cluster)
//! per burst with `--spawn` (or uses the `--target`s), runs the bursts, and rewrites the report after each one, so
//! that a long run that fails half way keeps what it measured.

use crate::burst::{self, Plan};
use crate::cli::{
    BurstArgs, Cli, FlashSaleArgs, Global, PeakArgs, PlanArgs, Scenario, SweepArgs, ThroughputArgs,
};
use crate::client::{Endpoints, Target, parse_targets, source_addresses_for};
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
use crate::server::{Cluster, ClusterShape, Spawned, Tuning, admin_token, serve_flags};
use crate::study;
use crate::throughput;
use std::path::PathBuf;
use std::time::Duration;

/// Runs the scenario; `Ok(true)` when every burst's counts added up.
pub async fn run(cli: Cli) -> Result<bool, String> {
    if cli.global.spawn_cluster.is_none() && cli.global.fronts > 0 {
        return Err("--fronts needs --spawn-cluster".into());
    }
    if cli.global.spawn_cluster.is_some() && cli.global.durability == "none" {
        return Err(
            "a cluster's shard nodes keep their data: --durability none is for a single node"
                .into(),
        );
    }
    // With client processes this one holds no lane (each child raises its own limit), but the lanes of them all
    // share the source addresses.
    let mut lanes_elsewhere = 0;
    let concurrency_max = match &cli.command {
        Scenario::Burst(args) => {
            let lanes = in_flight(args.concurrency, args.users);
            if args.client_processes.is_some() {
                lanes_elsewhere = lanes;
            }
            lanes - lanes_elsewhere
        }
        Scenario::SweepPayment(args) => in_flight(args.concurrency, args.users),
        Scenario::Peak(args) => in_flight(args.concurrency, args.max_users),
        Scenario::Plan(args) => {
            if args.service_rate.is_some() && !args.verify {
                return plan_offline(args, &cli.global);
            }
            in_flight(args.concurrency, args.orders.max(args.calibration_orders))
        }
        Scenario::FlashSale(args) => {
            if cli.global.spawn_cluster.is_some()
                || (cli.global.spawn.is_none() && cli.global.target.contains(','))
            {
                return Err(
                    "flash-sale runs against one node: one --target, no --spawn-cluster".into(),
                );
            }
            in_flight(args.concurrency, args.buyers) + args.subscribers
        }
        Scenario::Throughput(args) => {
            check_throughput(&cli.global, args)?;
            args.connections
        }
        Scenario::ServeBare(args) => return crate::bare::serve(args).await.map(|()| true),
        Scenario::BurstClient => return crate::processes::child().await.map(|()| true),
    };
    let mut runner = Runner::new(
        cli.global,
        scenario_name(&cli.command),
        concurrency_max,
        concurrency_max + lanes_elsewhere,
    )?;
    match cli.command {
        Scenario::Burst(args) => runner.burst(args).await,
        Scenario::SweepPayment(args) => runner.sweep(args).await,
        Scenario::Peak(args) => runner.peak(args).await,
        Scenario::Plan(args) => runner.plan(args).await,
        Scenario::FlashSale(args) => runner.flash_sale(args).await,
        Scenario::Throughput(args) => runner.throughput(args).await,
        Scenario::ServeBare(_) | Scenario::BurstClient => unreachable!("served above"),
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
        Scenario::BurstClient => "burst-client",
    }
}

/// What a run starts for a burst (or a loop).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Servers {
    Node,
    Cluster(ClusterShape),
}

impl Servers {
    /// The processes clients connect to.
    fn entry_points(self) -> u64 {
        match self {
            Servers::Node => 1,
            Servers::Cluster(shape) if shape.fronts > 0 => u64::from(shape.fronts),
            Servers::Cluster(shape) => u64::from(shape.nodes),
        }
    }

    fn describe(self) -> String {
        match self {
            Servers::Node => "one node".into(),
            Servers::Cluster(shape) => cluster_name(shape),
        }
    }
}

fn cluster_name(shape: ClusterShape) -> String {
    match shape.fronts {
        0 => format!("{}-node cluster", shape.nodes),
        fronts => format!("{}-node cluster with {fronts} front(s)", shape.nodes),
    }
}

struct Runner {
    global: Global,
    /// `--target`'s bases (unused with --spawn).
    targets: Vec<String>,
    admin_token: String,
    report: Report,
    out: PathBuf,
    source_addresses: u32,
    bursts_run: u64,
    run_id: String,
}

impl Runner {
    /// `concurrency_max`: connections this process opens at most; `lanes`: those of the whole run (child processes
    /// included), which share the source addresses.
    fn new(
        global: Global,
        scenario: &str,
        concurrency_max: u64,
        lanes: u64,
    ) -> Result<Self, String> {
        let open_files_max = raise_open_files(concurrency_max + DESCRIPTORS_SPARE);
        if open_files_max < concurrency_max + DESCRIPTORS_SPARE {
            eprintln!(
                "warning: {open_files_max} open files allowed, fewer than {} requests in flight need; \
                 connections beyond it fail (raise the hard limit: ulimit -Hn)",
                concurrency_max
            );
        }
        let targets = if global.spawn.is_some() {
            Vec::new()
        } else {
            parse_targets(&global.target)?
        };
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
            .unwrap_or_else(|| source_addresses_for(lanes));
        let report = Report {
            scenario: scenario.to_owned(),
            command: command_line(),
            started_at: started_at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            target: match (&global.spawn, global.spawn_cluster) {
                (Some(_), Some(nodes)) => format!(
                    "spawned {}",
                    cluster_name(ClusterShape {
                        nodes,
                        fronts: global.fronts
                    })
                ),
                (Some(_), None) => "spawned".into(),
                (None, _) => targets.join(","),
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
            targets,
            admin_token,
            report,
            out,
            source_addresses,
            bursts_run: 0,
            run_id: format!("{:08x}", rand::random::<u32>()),
        })
    }

    /// What `--spawn` starts: one node, or the `--spawn-cluster` cluster.
    fn servers(&self) -> Servers {
        match self.global.spawn_cluster {
            Some(nodes) => Servers::Cluster(ClusterShape {
                nodes,
                fronts: self.global.fronts,
            }),
            None => Servers::Node,
        }
    }

    /// Runs one burst of `users` orders, `concurrency` at once, on fresh `servers` with `--spawn` (against the
    /// targets otherwise), its lanes in `client_processes` processes when given.
    async fn one_burst(
        &mut self,
        users: u64,
        (concurrency, client_processes): (u64, Option<u64>),
        capacity: u64,
        payment_latency_ms: Option<u64>,
        servers: Servers,
    ) -> Result<(BurstReport, Vec<Sample>), String> {
        let plan = Plan {
            users,
            concurrency,
            capacity,
            payment_latency_ms,
            shards: self.global.shards,
            prefix: format!("load-{}-{}-", self.run_id, self.bursts_run),
            client_processes,
        };
        self.bursts_run += 1;
        eprintln!(
            "burst {}: {users} orders, {concurrency} at once, provider latency {}{}",
            self.bursts_run,
            payment_latency_ms.map_or("as the target runs".into(), |ms| format!("{ms} ms")),
            match self.global.spawn {
                Some(_) => format!(", on {}", servers.describe()),
                None => String::new(),
            }
        );
        let timeout = Duration::from_secs(self.global.request_timeout_s);
        let Some(binary) = self.global.spawn.clone() else {
            let endpoints = Endpoints::new(&self.targets, self.source_addresses, timeout)?;
            return burst::run(&endpoints, &self.admin_token, &plan).await;
        };
        let tuning = Tuning {
            durability: self.global.durability.clone(),
            payment_concurrency: self.global.payment_concurrency,
            extra: self.global.server_args.clone(),
        };
        // Each entry point takes its share of the connections.
        let per_process = concurrency.div_ceil(servers.entry_points());
        let flags = serve_flags(&tuning, users, per_process, payment_latency_ms.unwrap_or(0));
        let (measured, runs) = self
            .on_servers(&binary, servers, &flags, async |endpoints, _| {
                burst::run(&endpoints, &self.admin_token, &plan).await
            })
            .await?;
        self.record_servers(runs);
        measured
    }

    async fn burst(&mut self, args: BurstArgs) -> Result<bool, String> {
        let concurrency = in_flight(args.concurrency, args.users);
        let capacity = args.capacity.unwrap_or(args.users);
        let servers = self.servers();
        let (burst, samples) = self
            .one_burst(
                args.users,
                (concurrency, args.client_processes),
                capacity,
                args.payment_latency_ms,
                servers,
            )
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
            let servers = self.servers();
            let (burst, samples) = self
                .one_burst(
                    args.users,
                    (concurrency, None),
                    args.users,
                    Some(latency_ms),
                    servers,
                )
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
            let servers = self.servers();
            let (burst, samples) = self
                .one_burst(
                    users,
                    (concurrency, None),
                    users,
                    Some(args.payment_latency_ms),
                    servers,
                )
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
        let (mut calibration, calibrated) = match (args.service_rate, args.base_latency_ms) {
            (Some(rate), Some(base_ms)) => (given(rate, base_ms, args.phase_share, cores)?, false),
            _ => {
                let orders = args.calibration_orders;
                let concurrency = in_flight(args.concurrency, orders);
                // On one node: the cluster's forwarding is calibrated apart.
                let (fast, samples) = self
                    .one_burst(orders, (concurrency, None), orders, Some(0), Servers::Node)
                    .await?;
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
                    .one_burst(
                        orders,
                        (concurrency, None),
                        orders,
                        Some(slow_ms),
                        Servers::Node,
                    )
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
        calibration.forward_cpu_share = args.forward_cpu_share.unwrap_or(0.0).max(0.0);
        calibration.hop_latency_s = args.hop_latency_ms.unwrap_or(0.0).max(0.0) / 1000.0;
        let mut forwarding = None;
        match (self.global.spawn_cluster, args.forward_cpu_share) {
            (Some(nodes), None) if nodes >= 2 => {
                let hop = self.calibrate_forwarding(nodes, cores).await?;
                calibration.forward_cpu_share = hop.cpu_share_added.unwrap_or(0.0).max(0.0);
                if args.hop_latency_ms.is_none() {
                    calibration.hop_latency_s =
                        hop.latency_ms_added.unwrap_or(0.0).max(0.0) / 1000.0;
                }
                forwarding = Some(hop);
            }
            (Some(_), None) => eprintln!(
                "a one-node cluster has no hop to measure: forwarding costs nothing in the plan (give \
                 --forward-cpu-share)"
            ),
            _ => {}
        }
        let mut plan = plan_report(calibration, calibrated, question);
        plan.forwarding = forwarding;
        let prediction = plan.prediction;
        self.report.plan = Some(plan);
        self.write_plan(&sections)?;
        let hop_holds = self
            .report
            .plan
            .as_ref()
            .and_then(|plan| plan.forwarding.as_ref())
            .is_none_or(|hop| hop.invariants.hold);
        if !args.verify {
            return Ok(hop_holds && self.report.points.iter().all(|p| p.invariants.hold));
        }
        let concurrency = in_flight(args.concurrency, args.orders);
        let servers = self.servers();
        let (burst, samples) = self
            .one_burst(
                args.orders,
                (concurrency, None),
                args.orders,
                Some(args.payment_latency_ms),
                servers,
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
        Ok(hop_holds && self.report.points.iter().all(|p| p.invariants.hold))
    }

    /// The forwarding hop on a cluster of `nodes` shard nodes of its own: short loaded loops (a few connections per
    /// core) for the CPU, one connection for the latency.
    async fn calibrate_forwarding(
        &mut self,
        nodes: u32,
        cores: u32,
    ) -> Result<crate::forwarding::Hop, String> {
        let loaded = throughput::Shape {
            connections: u64::from(cores) * FORWARDING_CONNECTIONS_PER_CORE,
            warmup: Duration::from_secs(1),
            measured: Duration::from_secs(FORWARDING_SECONDS),
        };
        let alone = throughput::Shape {
            connections: 1,
            ..loaded
        };
        let hop = self.measure_hop(nodes, &loaded, &alone).await?;
        println!("{}", crate::forwarding::hop_line(&hop));
        Ok(hop)
    }

    /// Starts a cluster of `nodes` shard nodes (no fronts) with a 0 ms provider and measures a hop on it.
    async fn measure_hop(
        &mut self,
        nodes: u32,
        loaded: &throughput::Shape,
        alone: &throughput::Shape,
    ) -> Result<crate::forwarding::Hop, String> {
        let binary = self.global.spawn.clone().ok_or(THROUGHPUT_NEEDS_SPAWN)?;
        let servers = Servers::Cluster(ClusterShape { nodes, fronts: 0 });
        let flags = self.loop_flags("fsync", loaded.connections.div_ceil(u64::from(nodes)));
        let prefix = format!("hop-{}-{}-", self.run_id, self.bursts_run);
        self.bursts_run += 1;
        let (measured, runs) = self
            .on_servers(&binary, servers, &flags, async |endpoints, pids| {
                crate::forwarding::measure(
                    &endpoints.targets,
                    &self.admin_token,
                    &prefix,
                    self.global.shards,
                    (loaded, alone),
                    &pids,
                )
                .await
            })
            .await?;
        let exit = exits_text(&runs);
        self.record_servers(runs);
        let mut hop = measured?;
        for run in [
            &mut hop.direct,
            &mut hop.forwarded,
            &mut hop.direct_alone,
            &mut hop.forwarded_alone,
        ] {
            run.flags = flags.clone();
            run.exit = exit.clone();
        }
        Ok(hop)
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

/// `throughput`: the durable node, the cluster, the hop, the node without durability, the bare endpoint (those
/// `--runs` names), one after the other so that they never share the cores.
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
        let runs = throughput_runs(&args, &self.global);
        let wanted = |name: &str| runs.iter().any(|run| run == name);
        if wanted("durable") {
            let run = self.throughput_node(Servers::Node, "fsync", &shape).await?;
            println!("{}", throughput::run_line(&run));
            section.durable = Some(run);
            self.record_throughput(&mut section)?;
        }
        if wanted("cluster") {
            let servers = self.servers();
            let run = self.throughput_node(servers, "fsync", &shape).await?;
            println!("{}", throughput::run_line(&run));
            section.cluster = Some(run);
            self.record_throughput(&mut section)?;
        }
        if wanted("hop") {
            let nodes = self.global.spawn_cluster.unwrap_or(2);
            let alone = throughput::Shape {
                connections: 1,
                ..shape
            };
            let hop = self.measure_hop(nodes, &shape, &alone).await?;
            for run in hop.runs() {
                println!("{}", throughput::run_line(run));
            }
            println!("{}", crate::forwarding::hop_line(&hop));
            section.hop = Some(hop);
            self.record_throughput(&mut section)?;
        }
        if wanted("none") {
            let run = self.throughput_node(Servers::Node, "none", &shape).await?;
            println!("{}", throughput::run_line(&run));
            section.durability_none = Some(run);
            self.record_throughput(&mut section)?;
        }
        if wanted("bare") {
            let run = self.throughput_bare(&shape).await?;
            println!("{}", throughput::run_line(&run));
            section.bare = Some(run);
            self.record_throughput(&mut section)?;
        }
        println!("{}", throughput::summary_line(&section));
        let hop_holds = section.hop.as_ref().is_none_or(|hop| hop.invariants.hold);
        Ok(hop_holds
            && section
                .runs()
                .all(|run| run.invariants.as_ref().is_none_or(|counts| counts.hold)))
    }

    /// Rewrites the report with every run so far.
    fn record_throughput(&mut self, section: &mut ThroughputReport) -> Result<(), String> {
        section.compare();
        self.report.throughput = Some(section.clone());
        self.write(&[html::throughput_section(section)], None)
    }

    /// The flags of a node (or cluster process) for a closed loop of `connections` (per process) with a 0 ms
    /// provider: no buyer reaches the ticket limit.
    fn loop_flags(&self, durability: &str, connections: u64) -> Vec<String> {
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
        serve_flags(&tuning, connections, connections, 0)
    }

    /// boxoffice (`servers`: one node or the cluster) with `--durability DURABILITY` and a 0 ms provider.
    async fn throughput_node(
        &mut self,
        servers: Servers,
        durability: &str,
        shape: &throughput::Shape,
    ) -> Result<ThroughputRun, String> {
        let binary = self.global.spawn.clone().ok_or(THROUGHPUT_NEEDS_SPAWN)?;
        let flags = self.loop_flags(
            durability,
            shape.connections.div_ceil(servers.entry_points()),
        );
        let endpoint = match servers {
            Servers::Node => format!("boxoffice serve --durability {durability}"),
            Servers::Cluster(shape) => format!("{}, durable", cluster_name(shape)),
        };
        announce(&endpoint, shape);
        let prefix = format!("load-{}-{}-", self.run_id, self.bursts_run);
        self.bursts_run += 1;
        let (measured, runs) = self
            .on_servers(&binary, servers, &flags, async |endpoints, pids| {
                throughput::boxoffice(
                    &endpoints,
                    &self.admin_token,
                    &prefix,
                    self.global.shards,
                    shape,
                    &pids,
                )
                .await
            })
            .await?;
        let exit = exits_text(&runs);
        self.record_servers(runs);
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
        let (measured, runs) = self
            .on_servers(&binary, Servers::Node, &[], async |endpoints, pids| {
                throughput::bare(endpoints.first(), &prefix, shape, &pids).await
            })
            .await?;
        let measured_s = shape.measured.as_secs_f64();
        let exit = exits_text(&runs);
        Ok(measured?.into_run(endpoint, Vec::new(), measured_s, None, exit))
    }

    /// Notes the servers the run started and how they ended, for the report.
    fn record_servers(&mut self, runs: Vec<ServerRun>) {
        if let Some(spawned) = &mut self.report.spawned {
            spawned.runs.extend(runs);
        }
    }

    /// Starts `servers` (`binary serve` with `flags`: one node, or a cluster's processes), runs `measure` against
    /// them (their endpoints and pids) and stops them: what was measured, and each process as the report lists it.
    async fn on_servers<T>(
        &self,
        binary: &std::path::Path,
        servers: Servers,
        flags: &[String],
        measure: impl AsyncFnOnce(Endpoints, Vec<u32>) -> Result<T, String>,
    ) -> Result<(Result<T, String>, Vec<ServerRun>), String> {
        let timeout = Duration::from_secs(self.global.request_timeout_s);
        let run = |process: String, url: String, exit: String| ServerRun {
            log: match process.as_str() {
                "node" => "server.log".to_owned(),
                name => format!("{}.log", name.replace(' ', "-")),
            },
            process,
            url,
            flags: flags.to_vec(),
            exit,
        };
        match servers {
            Servers::Node => {
                let log = self.out.join("server.log");
                let server = Spawned::start(binary, flags, &self.admin_token, &log).await?;
                let pids = vec![server.pid()];
                let url = server.base.clone();
                let measured = match Endpoints::new(
                    std::slice::from_ref(&url),
                    self.source_addresses,
                    timeout,
                ) {
                    Ok(endpoints) => measure(endpoints, pids).await,
                    Err(error) => Err(error),
                };
                let exit = server.stop().await;
                Ok((measured, vec![run("node".into(), url, exit)]))
            }
            Servers::Cluster(shape) => {
                eprintln!("starting a {}", cluster_name(shape));
                let cluster =
                    Cluster::start(binary, shape, flags, &self.admin_token, &self.out).await?;
                let processes = cluster.processes();
                let pids = processes.iter().map(|(_, _, pid)| *pid).collect();
                let endpoints =
                    Endpoints::new(&cluster.entry_points(), self.source_addresses, timeout)
                        .and_then(|mut endpoints| {
                            endpoints.nodes = cluster
                                .nodes
                                .iter()
                                .map(|node| Target::new(&node.base, 1, timeout))
                                .collect::<Result<_, _>>()?;
                            Ok(endpoints)
                        });
                let measured = match endpoints {
                    Ok(endpoints) => measure(endpoints, pids).await,
                    Err(error) => Err(error),
                };
                let exits = cluster.stop().await;
                let runs = processes
                    .into_iter()
                    .zip(exits)
                    .map(|((process, url, _), exit)| run(process, url, exit))
                    .collect();
                Ok((measured, runs))
            }
        }
    }
}

/// How the processes of a run ended, in one line (`exit status: 0` for one that went well).
fn exits_text(runs: &[ServerRun]) -> String {
    match runs {
        [one] => one.exit.clone(),
        all => all
            .iter()
            .map(|run| format!("{}: {}", run.process, run.exit))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The loops `throughput` runs: `--runs`, or its default.
fn throughput_runs(args: &ThroughputArgs, global: &Global) -> Vec<String> {
    if !args.runs.is_empty() {
        return args.runs.clone();
    }
    let default: &[&str] = match global.spawn_cluster {
        Some(_) => &["durable", "cluster", "hop", "none", "bare"],
        None => &["durable", "none", "bare"],
    };
    default.iter().map(|run| (*run).to_owned()).collect()
}

/// The CPU each core can give a forwarding calibration loop: this many connections per core.
const FORWARDING_CONNECTIONS_PER_CORE: u64 = 16;
/// The measured window of each forwarding calibration loop.
const FORWARDING_SECONDS: u64 = 3;

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

/// Refuses a `throughput` run it cannot carry out: without --spawn, with a --server-arg it sets itself, or a
/// cluster's loop without a cluster.
fn check_throughput(global: &Global, args: &ThroughputArgs) -> Result<(), String> {
    if global.spawn.is_none() {
        return Err(THROUGHPUT_NEEDS_SPAWN.into());
    }
    let runs = throughput_runs(args, global);
    if runs.iter().any(|run| run == "cluster") && global.spawn_cluster.is_none() {
        return Err("--runs cluster needs --spawn-cluster N".into());
    }
    if runs.iter().any(|run| run == "hop") && global.spawn_cluster.is_none_or(|nodes| nodes < 2) {
        return Err(
            "--runs hop needs --spawn-cluster 2 or more: a hop goes from one node to another"
                .into(),
        );
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
         p90 {:.3} p99 {:.3} max {:.3}; sent within {:.3} s (p50 {:.3}); {:.1} orders/s; counts {}",
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
        burst.sent_ms.max / 1000.0,
        burst.sent_ms.p50 / 1000.0,
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

/// The planner's question; with --spawn-cluster, the burst is predicted (and verified) on that cluster, on this
/// machine.
fn question_of(args: &PlanArgs, global: &Global) -> Question {
    Question {
        orders: args.orders,
        payment_latency_s: args.payment_latency_ms as f64 / 1000.0,
        payment_concurrency: global
            .payment_concurrency
            .map_or(PAYMENT_CONCURRENCY_DEFAULT, u64::from),
        slo_s: args.slo_s,
        nodes: global.spawn_cluster.unwrap_or(1),
        fronts: global.spawn_cluster.is_some() && global.fronts > 0,
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
        forward_cpu_share: 0.0,
        hop_latency_s: 0.0,
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
        forward_cpu_share: 0.0,
        hop_latency_s: 0.0,
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
            "to answer every order within {} s: {:.0} orders/s, {cores} cores ({nodes} node(s) of {} cores, {:.0}% \
             of their CPU forwarding), {cores} shards or more, {slots} payment calls in flight",
            question.slo_s,
            prediction.required_throughput_per_s.unwrap_or_default(),
            calibration.cores,
            prediction.required_forwarding_share.unwrap_or(0.0) * 100.0
        ),
        _ => format!(
            "no size answers within {} s: one order alone takes {:.2} s",
            question.slo_s,
            calibration.base_latency_s + question.payment_latency_s
        ),
    };
    let on = match (question.nodes, question.fronts) {
        (1, false) => "one node".to_owned(),
        (nodes, false) => format!(
            "{nodes} nodes on these cores ({:.0}% forwarded, CPU per order x{:.2})",
            prediction.forwarded_share * 100.0,
            prediction.cost_factor
        ),
        (nodes, true) => format!(
            "{nodes} nodes behind fronts on these cores (every order forwarded, CPU per order x{:.2})",
            prediction.cost_factor
        ),
    };
    format!(
        "calibration: {:.0} orders/s on {} cores, {:.0} ms for one order, {:.0} us per order in the longer phase; \
         a forwarded order +{:.0}% of CPU and +{:.2} ms\n\
         prediction for {} orders at once on {on}, provider {:.0} ms, {} payment slots: {:.0} orders/s (bound by \
         {}), longest {:.2} s, mean {:.2} s, objective {} s {}\n{sizing}",
        calibration.service_rate_per_s,
        calibration.cores,
        calibration.base_latency_s * 1000.0,
        calibration.phase_s * 1e6,
        calibration.forward_cpu_share * 100.0,
        calibration.hop_latency_s * 1000.0,
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
        forwarding: None,
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
    let mut calibration = given(
        args.service_rate.unwrap_or_default(),
        args.base_latency_ms.unwrap_or_default(),
        args.phase_share,
        args.cores.unwrap_or(machine_cores() as u32),
    )?;
    calibration.forward_cpu_share = args.forward_cpu_share.unwrap_or(0.0).max(0.0);
    calibration.hop_latency_s = args.hop_latency_ms.unwrap_or(0.0).max(0.0) / 1000.0;
    let plan = plan_report(calibration, false, question_of(args, global));
    let text = serde_json::to_string_pretty(&plan).map_err(|error| error.to_string())?;
    println!("{text}");
    // From given rates nothing is measured, so there is no chart: the plan itself is the report.
    if let Some(out) = &global.out {
        std::fs::create_dir_all(out)
            .and_then(|()| std::fs::write(out.join("plan.json"), format!("{text}\n")))
            .map_err(|error| format!("cannot write {}: {error}", out.display()))?;
        println!("report: {}", out.join("plan.json").display());
    }
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
                let target = Target::new(&self.targets[0], self.source_addresses, timeout)?;
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
                let (measured, runs) = self
                    .on_servers(&binary, Servers::Node, &flags, async |endpoints, _| {
                        flash::run(endpoints.first(), &self.admin_token, &plan).await
                    })
                    .await?;
                self.record_servers(runs);
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

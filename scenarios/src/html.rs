//! `report.html`: the figures as tables and the charts as inline SVG, with the study's figures beside ours. One
//! file, no script, nothing fetched.

use crate::report::{BurstReport, Outcome, Outcomes, PlanReport, Report, Sample, ThroughputReport};
use crate::stats::{bands, histogram};
use crate::study;
use crate::svg::{
    BLUE, BarChart, Chart, GREEN, GREY, Mark, ORANGE, PURPLE, Series, VERMILLION, escape,
    format_number, nice_ticks,
};

/// Bars of a latency histogram.
const HISTOGRAM_BINS: usize = 40;
/// Slices of completion time in the latency-over-time chart.
const TIME_SLICES: usize = 60;

/// The whole page: a header with the command, then `sections` (already HTML).
pub fn page(report: &Report, sections: &[String]) -> String {
    let mut html = String::from(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>boxoffice-load report</title><style>\
         body{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}\
         table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}\
         th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}code{background:#f4f4f4;padding:1px 4px}\
         svg{display:block;margin:1em 0;max-width:100%;height:auto}.bad{color:#b00;font-weight:bold}</style></head><body>",
    );
    html.push_str(&format!(
        "<h1>boxoffice-load: {}</h1><p><code>{}</code></p><p>Started {} against {}; {} cores, open files {}, {} \
         source address(es).</p>",
        escape(&report.scenario),
        escape(&report.command),
        escape(&report.started_at),
        escape(&report.target),
        report.machine.cores,
        report.machine.open_files_max,
        report.machine.source_addresses,
    ));
    if let Some(spawned) = &report.spawned {
        html.push_str(
            "<p>Servers started by the run (one node, or a cluster's processes, per burst or loop; the flags \
             besides <code>--listen</code>, <code>--data-dir</code> and a cluster's own):</p><ul>",
        );
        for run in &spawned.runs {
            html.push_str(&format!(
                "<li>{} {} (log <code>{}</code>): <code>{} serve {}</code>: {}</li>",
                escape(&run.process),
                escape(&run.url),
                escape(&run.log),
                escape(&spawned.binary),
                escape(&run.flags.join(" ")),
                escape(&run.exit)
            ));
        }
        html.push_str("</ul>");
    }
    for section in sections {
        html.push_str(section);
    }
    html.push_str(&format!(
        "<h2>The study</h2><p>One machine, an order service in front of SQL databases, a payment API taking {} ms \
         per call. {} simultaneous orders: shortest {} s, mean {} s, longest {} s ({} s, {} s and {} s with card \
         encryption). At most {} simultaneous orders were all answered within {} s.</p></body></html>",
        study::PAYMENT_LATENCY_MS,
        format_number(study::ORDERS as f64),
        study::MIN_S,
        study::MEAN_S,
        study::MAX_S,
        study::ENCRYPTED_MIN_S,
        study::ENCRYPTED_MEAN_S,
        study::ENCRYPTED_MAX_S,
        format_number(study::PEAK_ORDERS as f64),
        study::PEAK_SLO_S,
    ));
    html
}

/// A burst: its figures, ours against the study's, the latency histogram, latency and completions over time.
pub fn burst_section(title: &str, burst: &BurstReport, samples: &[Sample]) -> String {
    let mut html = format!("<h2>{}</h2>", escape(title));
    html.push_str(&figures_table(std::slice::from_ref(burst)));
    if !burst.invariants.hold {
        html.push_str(&format!(
            "<p class=\"bad\">Invariants broken: {}</p>",
            escape(&burst.invariants.problems.join("; "))
        ));
    }
    if let Some(tcp) = burst.kernel_tcp {
        html.push_str(&format!(
            "<p>The kernel during the burst (the whole machine): {} connections found the accept queue full, {} \
             SYNs or SYN-ACKs were sent again, {} SYN cookies were sent. A dropped connection attempt is retried \
             1, 3, 7, 15, 31 and 63 s later, which shows as steps in the latency.</p>",
            format_number(tcp.listen_overflows as f64),
            format_number(tcp.syn_retransmits as f64),
            format_number(tcp.syncookies_sent as f64),
        ));
    }
    if let Some(processes) = burst.parameters.client_processes {
        html.push_str(&format!(
            "<p>The lanes ran in {processes} client processes, every connection opened before the common start; \
             every latency is from that start.</p>"
        ));
    }
    html.push_str(&format!(
        "<p>The requests left the client within {} s of the start (half of them within {} s).</p>",
        format_number(burst.sent_ms.max / 1000.0),
        format_number(burst.sent_ms.p50 / 1000.0)
    ));
    html.push_str(&spread_tables(burst));
    html.push_str(&comparison_chart(burst).render());
    html.push_str(&histogram_chart(samples).render());
    html.push_str(&over_time_chart(samples).render());
    html.push_str(&completions_chart(samples).render());
    html
}

/// One row per burst.
pub fn figures_table(bursts: &[BurstReport]) -> String {
    let mut html = String::from(
        "<table><tr><th>orders</th><th>in flight</th><th>provider ms</th><th>ok</th><th>sold out</th><th>errors</th>\
         <th>min s</th><th>mean s</th><th>p50 s</th><th>p90 s</th><th>p99 s</th><th>max s</th><th>orders/s</th>\
         <th>counts add up</th></tr>",
    );
    for burst in bursts {
        let seconds = |ms: f64| format_number(ms / 1000.0);
        let latency = &burst.latency_ms;
        let errors = errors_text(&burst.errors_by_kind);
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            format_number(burst.orders as f64),
            format_number(burst.parameters.concurrency as f64),
            burst
                .parameters
                .payment_latency_ms
                .map_or("?".into(), |ms| format_number(ms as f64)),
            format_number(burst.ok as f64),
            format_number(burst.sold_out as f64),
            escape(&errors),
            seconds(latency.min),
            seconds(latency.mean),
            seconds(latency.p50),
            seconds(latency.p90),
            seconds(latency.p99),
            seconds(latency.max),
            format_number(burst.throughput_per_s),
            if burst.invariants.hold { "yes" } else { "NO" },
        ));
    }
    html.push_str("</table>");
    html
}

/// Where the orders went: by target and, in a cluster, by the node of their buyer (with what the node's own
/// `/metrics` counted when known).
pub fn spread_tables(burst: &BurstReport) -> String {
    let head = "<th>orders</th><th>201</th><th>409</th><th>503</th><th>other errors</th>";
    let cells = |o: &Outcomes| {
        [
            o.orders,
            o.ok_201,
            o.conflict_409,
            o.unavailable_503,
            o.errors,
        ]
        .iter()
        .map(|n| format!("<td>{}</td>", format_number(*n as f64)))
        .collect::<String>()
    };
    let mut html = String::new();
    if burst.targets.len() > 1 {
        html.push_str(&format!(
            "<p>By target (lanes spread round-robin):</p><table><tr><th>target</th>{head}</tr>"
        ));
        for target in &burst.targets {
            html.push_str(&format!(
                "<tr><td>{}</td>{}</tr>",
                escape(&target.url),
                cells(&target.outcomes)
            ));
        }
        html.push_str("</table>");
    }
    if !burst.nodes.is_empty() {
        html.push_str(&format!(
            "<p>By the shard node of the buyer (which executes the order, wherever it was sent):</p><table><tr>\
             <th>node</th>{head}<th>the node's /metrics: orders it coordinated</th></tr>"
        ));
        for node in &burst.nodes {
            let coordinated = node.coordinated.as_ref().map_or("-".to_owned(), |counts| {
                counts
                    .iter()
                    .map(|(outcome, n)| format!("{n} {outcome}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
            html.push_str(&format!(
                "<tr><td>{}{}</td>{}<td>{}</td></tr>",
                node.node,
                node.url
                    .as_ref()
                    .map_or(String::new(), |url| format!(" ({})", escape(url))),
                cells(&node.outcomes),
                escape(&coordinated)
            ));
        }
        html.push_str("</table>");
    }
    html
}

/// Errors by kind as `"<count> <kind>, ..."`, or `0`.
fn errors_text(errors_by_kind: &std::collections::BTreeMap<String, u64>) -> String {
    if errors_by_kind.is_empty() {
        return "0".to_owned();
    }
    errors_by_kind
        .iter()
        .map(|(kind, count)| format!("{count} {kind}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Mean and longest response time, ours beside the study's at 10,000 orders.
pub fn comparison_chart(burst: &BurstReport) -> BarChart {
    let ours = format!("ours, {} orders", format_number(burst.orders as f64));
    BarChart {
        title:
            "Mean and longest response time: ours and the study's (10,000 orders, 1.4 s provider)"
                .into(),
        unit: "s".into(),
        bars: vec![
            (
                format!("{ours}: mean"),
                burst.latency_ms.mean / 1000.0,
                BLUE,
            ),
            (
                format!("{ours}: longest"),
                burst.latency_ms.max / 1000.0,
                BLUE,
            ),
            ("study: mean".into(), study::MEAN_S, GREY),
            ("study: longest".into(), study::MAX_S, GREY),
            (
                "study with encryption: mean".into(),
                study::ENCRYPTED_MEAN_S,
                ORANGE,
            ),
            (
                "study with encryption: longest".into(),
                study::ENCRYPTED_MAX_S,
                ORANGE,
            ),
        ],
    }
}

/// How many orders were answered after how long.
pub fn histogram_chart(samples: &[Sample]) -> Chart {
    let seconds: Vec<f64> = samples.iter().map(|s| s.latency_ms() / 1000.0).collect();
    let high = seconds.iter().copied().fold(0.0, f64::max);
    let (_, high, _) = nice_ticks(0.0, high.max(0.001), 6);
    let bins = histogram(&seconds, 0.0, high, HISTOGRAM_BINS);
    let width = high / HISTOGRAM_BINS as f64;
    Chart::new(
        "Latency distribution (from the start of the burst)",
        "response time (s)",
        "orders",
    )
    .series(
        Series::new("", BLUE, Mark::Bars { width })
            .points(bins.iter().map(|bin| (bin.low, bin.count as f64)).collect()),
    )
}

/// Latency percentiles of the orders answered in each slice of the burst, by the time they were answered.
pub fn over_time_chart(samples: &[Sample]) -> Chart {
    let points: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.done_ms / 1000.0, s.latency_ms() / 1000.0))
        .collect();
    let service: Vec<(f64, f64)> = samples
        .iter()
        .map(|s| (s.done_ms / 1000.0, s.service_ms() / 1000.0))
        .collect();
    let end = points.iter().map(|p| p.0).fold(0.0, f64::max).max(0.001);
    let latency = bands(&points, 0.0, end, TIME_SLICES);
    let service = bands(&service, 0.0, end, TIME_SLICES);
    let line = |name: &str, color, values: Vec<(f64, f64)>| {
        Series::new(name, color, Mark::Line).points(values)
    };
    Chart::new(
        "Latency over time, by when the order was answered",
        "time since the burst started (s)",
        "response time (s)",
    )
    .series(line(
        "max",
        VERMILLION,
        latency.iter().map(|b| (b.at, b.max)).collect(),
    ))
    .series(line(
        "p99",
        ORANGE,
        latency.iter().map(|b| (b.at, b.p99)).collect(),
    ))
    .series(line(
        "p50",
        BLUE,
        latency.iter().map(|b| (b.at, b.p50)).collect(),
    ))
    .series(line(
        "p50 from sending",
        GREEN,
        service.iter().map(|b| (b.at, b.p50)).collect(),
    ))
}

/// Orders answered per second through the burst, by outcome.
pub fn completions_chart(samples: &[Sample]) -> Chart {
    let end_s = samples
        .iter()
        .map(|s| s.done_ms / 1000.0)
        .fold(0.0, f64::max)
        .max(0.001);
    let width = end_s / TIME_SLICES as f64;
    let of = |keep: fn(&Outcome) -> bool| {
        let answered: Vec<f64> = samples
            .iter()
            .filter(|s| keep(&s.outcome))
            .map(|s| s.done_ms / 1000.0)
            .collect();
        histogram(&answered, 0.0, end_s, TIME_SLICES)
            .iter()
            .map(|bin| (bin.low + width / 2.0, bin.count as f64 / width))
            .collect::<Vec<_>>()
    };
    let mut chart = Chart::new(
        "Orders answered per second",
        "time since the burst started (s)",
        "orders per second",
    )
    .series(Series::new("201 confirmed", BLUE, Mark::Line).points(of(|o| *o == Outcome::Ok)));
    if samples.iter().any(|s| s.outcome == Outcome::SoldOut) {
        chart = chart.series(
            Series::new("409 sold out", PURPLE, Mark::Line).points(of(|o| *o == Outcome::SoldOut)),
        );
    }
    if samples
        .iter()
        .any(|s| matches!(s.outcome, Outcome::Error(_)))
    {
        chart = chart.series(
            Series::new("errors", VERMILLION, Mark::Line)
                .points(of(|o| matches!(o, Outcome::Error(_)))),
        );
    }
    chart
}

/// Mean and longest response time against the provider's latency; the study's 10,000-order figures at its 1.4 s.
pub fn sweep_chart(points: &[BurstReport]) -> Chart {
    let series = |name: &str, color, pick: fn(&BurstReport) -> f64| {
        Series::new(name, color, Mark::LineAndPoints)
            .points(
                points
                    .iter()
                    .map(|p| (p.parameters.payment_latency_ms.unwrap_or(0) as f64, pick(p)))
                    .collect(),
            )
            .labelled()
    };
    let orders = points.first().map_or(0, |p| p.orders);
    Chart::new(
        format!(
            "Response time against the payment provider's latency ({} orders at once)",
            format_number(orders as f64)
        ),
        "provider latency per charge (ms)",
        "response time (s, log scale)",
    )
    .log_y()
    .series(series("ours: longest", VERMILLION, |p| {
        p.latency_ms.max / 1000.0
    }))
    .series(series("ours: mean", BLUE, |p| p.latency_ms.mean / 1000.0))
    .series(
        Series::new("study, 10,000 orders", GREY, Mark::Points)
            .points(vec![
                (study::PAYMENT_LATENCY_MS as f64, study::MEAN_S),
                (study::PAYMENT_LATENCY_MS as f64, study::MAX_S),
            ])
            .texts(vec![
                format!("study mean {} s", study::MEAN_S),
                format!("study longest {} s", study::MAX_S),
            ]),
    )
}

/// Longest response time against the number of simultaneous orders, with the objective and the study's points.
pub fn peak_chart(points: &[BurstReport], slo_s: f64) -> Chart {
    let mut ours: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.orders as f64, p.latency_ms.max / 1000.0))
        .collect();
    ours.sort_by(|a, b| a.0.total_cmp(&b.0));
    Chart::new(
        "Longest response time against simultaneous orders",
        "simultaneous orders (log scale)",
        "longest response time (s, log scale)",
    )
    .log_x()
    .log_y()
    .series(
        Series::new("ours", BLUE, Mark::LineAndPoints)
            .points(ours)
            .labelled(),
    )
    .series(
        Series::new("study", GREY, Mark::Points)
            .points(vec![
                (study::ORDERS as f64, study::MAX_S),
                (study::PEAK_ORDERS as f64, study::PEAK_SLO_S),
            ])
            .texts(vec![
                format!(
                    "study: {} s at {}",
                    study::MAX_S,
                    format_number(study::ORDERS as f64)
                ),
                format!(
                    "study's peak: {} orders",
                    format_number(study::PEAK_ORDERS as f64)
                ),
            ]),
    )
    .rule(
        true,
        slo_s,
        format!("objective: {} s", format_number(slo_s)),
        VERMILLION,
    )
}

/// The planner's calibration, prediction, sizing and, when verified, its error.
pub fn plan_section(plan: &PlanReport) -> String {
    let c = &plan.calibration;
    let q = &plan.question;
    let p = &plan.prediction;
    let or_none = |value: Option<u64>| value.map_or("none answers".to_owned(), |v| v.to_string());
    let mut rows = vec![
        (
            "calibration".to_owned(),
            format!(
                "{:.0} orders/s on {} cores, {:.0} ms for one order, {:.0} us per order in the longer phase ({})",
                c.service_rate_per_s,
                c.cores,
                c.base_latency_s * 1000.0,
                c.phase_s * 1e6,
                if plan.calibrated {
                    "measured: the first two bursts below"
                } else {
                    "given"
                }
            ),
        ),
        (
            "question".to_owned(),
            format!(
                "{} orders at once, provider {:.0} ms, {} payment slots, objective {} s",
                q.orders,
                q.payment_latency_s * 1000.0,
                q.payment_concurrency,
                q.slo_s
            ),
        ),
        (
            "predicted".to_owned(),
            format!(
                "{:.0} orders/s (bound by {}), longest {:.2} s, mean {:.2} s: objective {}",
                p.throughput_per_s,
                p.bottleneck,
                p.max_latency_s,
                p.mean_latency_s,
                if p.meets_slo { "met" } else { "missed" }
            ),
        ),
        (
            "needed for the objective".to_owned(),
            format!(
                "{} cores, {} shards or more, {} nodes of {} cores, {} payment calls in flight",
                or_none(p.required_cores),
                or_none(p.required_shards),
                or_none(p.required_nodes),
                c.cores,
                or_none(p.required_payment_concurrency)
            ),
        ),
    ];
    if c.forward_cpu_share > 0.0 || c.hop_latency_s > 0.0 || plan.forwarding.is_some() {
        rows.insert(
            1,
            (
                "forwarding".to_owned(),
                format!(
                    "a forwarded order costs {:.0}% more CPU than one sent to its buyer's node (all processes), \
                     +{:.2} ms of latency ({})",
                    c.forward_cpu_share * 100.0,
                    c.hop_latency_s * 1000.0,
                    plan.forwarding
                        .as_ref()
                        .map_or("given".to_owned(), |hop| format!(
                            "measured on a {}-node cluster: the loops below",
                            hop.nodes
                        ))
                ),
            ),
        );
        rows.push((
            "the question's cluster".to_owned(),
            format!(
                "{} node(s){}: {:.0}% of the orders forwarded, CPU per order x{:.3}; the sized nodes spend {:.0}% \
                 of their CPU forwarding",
                q.nodes,
                if q.fronts { " behind fronts" } else { "" },
                p.forwarded_share * 100.0,
                p.cost_factor,
                p.required_forwarding_share.unwrap_or(0.0) * 100.0
            ),
        ));
    }
    if let Some(v) = &plan.verification {
        rows.push((
            "measured".to_owned(),
            format!(
                "longest {:.2} s, mean {:.2} s, {:.0} orders/s",
                v.measured_max_s, v.measured_mean_s, v.measured_throughput_per_s
            ),
        ));
        rows.push((
            "model error, (measured - predicted) / measured".to_owned(),
            format!(
                "longest {:+.1}%, mean {:+.1}%, throughput {:+.1}%",
                v.max_error_percent, v.mean_error_percent, v.throughput_error_percent
            ),
        ));
    }
    let mut html = String::from("<h2>Capacity plan</h2><table>");
    for (name, value) in rows {
        html.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>",
            crate::svg::escape(&name),
            crate::svg::escape(&value)
        ));
    }
    html.push_str("</table>");
    if let Some(v) = &plan.verification {
        html.push_str(&predicted_beside_measured(p, v));
    }
    if let Some(hop) = &plan.forwarding {
        html.push_str(&runs_table(hop.runs()));
    }
    html
}

/// The prediction and the burst that verified it, bar beside bar: latencies in one chart, the rate in another.
fn predicted_beside_measured(
    p: &crate::model::Prediction,
    v: &crate::report::Verification,
) -> String {
    use crate::svg::{BLUE, BarChart, ORANGE};
    let latencies = BarChart {
        title: "Predicted and measured: latency".into(),
        unit: "s".into(),
        bars: vec![
            ("longest, predicted".into(), p.max_latency_s, BLUE),
            ("longest, measured".into(), v.measured_max_s, ORANGE),
            ("mean, predicted".into(), p.mean_latency_s, BLUE),
            ("mean, measured".into(), v.measured_mean_s, ORANGE),
        ],
    };
    let rate = BarChart {
        title: "Predicted and measured: orders per second".into(),
        unit: "orders/s".into(),
        bars: vec![
            ("predicted".into(), p.throughput_per_s, BLUE),
            ("measured".into(), v.measured_throughput_per_s, ORANGE),
        ],
    };
    format!("{}{}", latencies.render(), rate.render())
}

/// `throughput`: the ratios, the rates as bars, and a row per run.
pub fn throughput_section(report: &ThroughputReport) -> String {
    let ratio =
        |ratio: Option<f64>| ratio.map_or("not measured yet".to_owned(), |r| format!("{r:.3}"));
    let mut html = format!(
        "<h2>Throughput</h2><p>{} kept-alive connections, each sending orders back to back: {} s of warm-up, then \
         {} s measured; the rate counts the 201s answered within the measured window. Durable / bare: <b>{}</b>; \
         durable / durability none: <b>{}</b>.</p>",
        report.connections,
        report.warmup_s,
        report.seconds,
        ratio(report.ratio_durable_to_bare),
        ratio(report.ratio_durable_to_none),
    );
    if report.cluster.is_some() {
        html.push_str(&format!(
            "<p>The cluster on the same machine / one durable node: <b>{}</b>.</p>",
            ratio(report.ratio_cluster_to_durable)
        ));
    }
    if let Some(hop) = &report.hop {
        html.push_str(&format!(
            "<p>{}.</p>",
            escape(&crate::forwarding::hop_line(hop))
        ));
    }
    let colors = [BLUE, VERMILLION, GREEN, PURPLE, GREEN, PURPLE, ORANGE, GREY];
    html.push_str(
        &BarChart {
            title: "Orders answered 201 per second, measured window".into(),
            unit: "orders/s".into(),
            bars: report
                .runs()
                .zip(colors)
                .map(|(run, color)| (run.endpoint.clone(), run.created_per_s, color))
                .collect(),
        }
        .render(),
    );
    html.push_str(&runs_table(report.runs()));
    html
}

/// A row per closed loop.
fn runs_table<'a>(runs: impl Iterator<Item = &'a crate::report::ThroughputRun>) -> String {
    let mut html = String::from(
        "<table><tr><th>endpoint</th><th>orders/s</th><th>201s in window</th><th>orders sent</th><th>201s</th>\
         <th>errors</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>max ms</th><th>server CPU us/order</th>\
         <th>counts add up</th><th>server exit</th></tr>",
    );
    for run in runs {
        let latency = |pick: fn(&crate::stats::Summary) -> f64| {
            run.latency_ms
                .as_ref()
                .map_or("-".to_owned(), |l| format_number(pick(l)))
        };
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&run.endpoint),
            format_number(run.created_per_s),
            format_number(run.measured_created as f64),
            format_number(run.orders as f64),
            format_number(run.created as f64),
            escape(&errors_text(&run.errors_by_kind)),
            latency(|l| l.p50),
            latency(|l| l.p90),
            latency(|l| l.p99),
            latency(|l| l.max),
            run.cpu_us_per_order
                .map_or("-".to_owned(), format_number),
            match &run.invariants {
                None => "-",
                Some(counts) if counts.hold => "yes",
                Some(_) => "NO",
            },
            escape(&run.exit),
        ));
    }
    html.push_str("</table>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{BurstParameters, Invariants, summarize};

    fn burst(latency_ms: u64) -> (BurstReport, Vec<Sample>) {
        let samples: Vec<Sample> = (1..=50)
            .map(|i| Sample {
                sent_ms: 0.0,
                done_ms: (i * 30) as f64,
                outcome: if i == 50 {
                    Outcome::SoldOut
                } else {
                    Outcome::Ok
                },
                target: (i % 2) as u32,
                node: Some((i % 3) as u32),
            })
            .collect();
        let parameters = BurstParameters {
            users: 50,
            concurrency: 50,
            capacity: 49,
            payment_latency_ms: Some(latency_ms),
            client_processes: None,
        };
        let mut report = summarize(
            parameters,
            &samples,
            0.1,
            Invariants::check(49, 0, 0, 49, 49),
        );
        report.targets =
            crate::report::by_target(&samples, &["http://a".into(), "http://b".into()]);
        (report, samples)
    }

    #[test]
    fn a_burst_section_has_its_figures_and_four_charts() {
        let (report, samples) = burst(1400);
        let html = burst_section("Burst <50>", &report, &samples);
        assert_eq!(html.matches("<svg").count(), 4);
        assert!(html.contains("Burst &lt;50&gt;"));
        assert!(html.contains("172.4 s"), "the study's longest");
        assert!(html.contains("409 sold out"));
        assert!(html.contains("By target") && html.contains("http://b"));
        assert!(html.contains("By the shard node"));
    }

    #[test]
    fn sweep_and_peak_charts_draw_every_point() {
        let points: Vec<BurstReport> = [0, 700, 1400].iter().map(|ms| burst(*ms).0).collect();
        let sweep = sweep_chart(&points).render();
        assert_eq!(sweep.matches("<circle").count(), 3 * 2 + 2);
        let peak = peak_chart(&points, 600.0).render();
        assert!(peak.contains("objective: 600 s"));
        assert!(peak.contains("31,186"));
    }
}

//! The flash sale in words and pictures: the line the terminal prints and the section of `report.html` (the buyers'
//! endings, the requests, the feed, the seats over time, latency over time and the click-to-screen delay).

use crate::flash::{FlashReport, FlashRun, Step};
use crate::stats::{Summary, bands, histogram};
use crate::svg::{
    BLUE, Chart, GREEN, GREY, Mark, ORANGE, PURPLE, Series, VERMILLION, escape, format_number,
};
use std::collections::BTreeMap;

/// Slices of time in the latency-over-time chart.
const TIME_SLICES: usize = 60;
/// Bars of the delivery histogram.
const HISTOGRAM_BINS: usize = 40;

/// One paragraph for the terminal.
pub fn summary(report: &FlashReport) -> String {
    let endings = report
        .buyers
        .iter()
        .map(|(ending, count)| format!("{count} {ending}"))
        .collect::<Vec<_>>()
        .join(", ");
    let requests = report
        .requests
        .iter()
        .map(|(kind, figures)| {
            format!(
                "{kind} {} (p50 {} ms, p99 {} ms, max {} ms)",
                figures.count,
                figure(figures.latency_ms, |s| s.p50),
                figure(figures.latency_ms, |s| s.p99),
                figure(figures.latency_ms, |s| s.max),
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let feed = &report.feed;
    format!(
        "flash sale: {} seats, {} buyers, {} subscribers; sale {:.2} s, settled {:.2} s later\n\
         buyers: {endings}\nrequests: {requests}\n\
         feed: {} changes caused, each subscriber got {} to {}, {} reconnects; click to a screen p50 {} ms, p99 {} \
         ms, max {} ms; to every screen p99 {} ms, max {} ms\n\
         seats sold {}; counts add up: {}{}",
        report.parameters.seats,
        report.parameters.buyers,
        report.parameters.subscribers,
        report.duration_s,
        report.settle_s,
        feed.changes_expected,
        feed.changes_seen_min,
        feed.changes_seen_max,
        feed.reconnects,
        figure(feed.delivery_ms, |s| s.p50),
        figure(feed.delivery_ms, |s| s.p99),
        figure(feed.delivery_ms, |s| s.max),
        figure(feed.delivery_to_all_ms, |s| s.p99),
        figure(feed.delivery_to_all_ms, |s| s.max),
        report.seats_sold,
        if report.invariants.hold { "yes" } else { "NO" },
        if report.invariants.hold {
            String::new()
        } else {
            format!(" ({})", report.invariants.problems.join("; "))
        },
    )
}

fn figure(summary: Option<Summary>, pick: fn(&Summary) -> f64) -> String {
    summary.map_or("-".into(), |s| format_number(pick(&s)))
}

/// The flash sale's section of `report.html`.
pub fn html_section(run: &FlashRun) -> String {
    let report = &run.report;
    let parameters = &report.parameters;
    let shares = parameters.shares;
    let mut html = format!(
        "<h2>Flash sale: {} seats, {} buyers, {} subscribers</h2><p>{} sections of {} rows of {} seats. Each buyer \
         wants 1 to {} seats side by side, picks them from what the first subscriber sees, tries {} holds at most, \
         thinks up to {} ms, then: {}% pay with a card the provider declines, {}% cancel, {}% walk away, {}% come \
         back after the hold expired, the rest buy. Hold time {} s, provider latency {}. Sale {} s, settled {} s \
         later (setup before the gate: {} s).</p>",
        format_number(parameters.seats as f64),
        format_number(parameters.buyers as f64),
        format_number(parameters.subscribers as f64),
        parameters.layout.sections,
        parameters.layout.rows,
        parameters.layout.seats_per_row,
        parameters.group_max,
        parameters.attempts,
        parameters.think_ms,
        shares.decline * 100.0,
        shares.cancel * 100.0,
        shares.abandon * 100.0,
        shares.late * 100.0,
        parameters
            .hold_ttl_s
            .map_or("unknown".into(), format_number),
        parameters
            .payment_latency_ms
            .map_or("as the target runs".into(), |ms| format!("{ms} ms")),
        format_number(report.duration_s),
        format_number(report.settle_s),
        format_number(report.setup_s),
    );
    if report.invariants.hold {
        html.push_str(&format!(
            "<p>Checked: the counts add up ({} sold, {} remaining, nothing held), every seat sold was bought once, \
             every subscriber's seat map ended equal to <code>GET /seats</code>, and {} of the {} subscribers (those \
             that never needed a second snapshot) received each change the buyers caused exactly once, in order \
             ({} seats left in doubt by a request without a clear answer were not compared).</p>",
            format_number(report.invariants.sold as f64),
            format_number(report.invariants.remaining as f64),
            report.feed.subscribers_checked,
            report.feed.subscribers,
            report.feed.seats_not_compared,
        ));
    } else {
        html.push_str(&format!(
            "<p class=\"bad\">Checks failed: {}</p>",
            escape(&report.invariants.problems.join("; "))
        ));
    }
    html.push_str(&counts_table(
        "how the visit ended",
        "buyers",
        &report.buyers,
    ));
    html.push_str(
        "<table><tr><th>request</th><th>count</th><th>answers</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>\
         <th>max ms</th></tr>",
    );
    for (kind, figures) in &report.requests {
        let answers = figures
            .answers
            .iter()
            .map(|(answer, count)| format!("{count} × {answer}"))
            .collect::<Vec<_>>()
            .join(", ");
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(kind),
            format_number(figures.count as f64),
            escape(&answers),
            figure(figures.latency_ms, |s| s.p50),
            figure(figures.latency_ms, |s| s.p90),
            figure(figures.latency_ms, |s| s.p99),
            figure(figures.latency_ms, |s| s.max),
        ));
    }
    html.push_str("</table>");
    let feed = &report.feed;
    html.push_str(&format!(
        "<p>The feed: {} seat changes caused by the buyers; each subscriber received {} to {}; {} reconnections, {} \
         of them answered with a new snapshot. From a click (sending a hold or purchase) to its change on a \
         subscriber's screen: p50 {} ms, p99 {} ms, max {} ms; to the last of the {} screens checked: p50 {} ms, p99 {} ms, \
         max {} ms.</p>",
        format_number(feed.changes_expected as f64),
        format_number(feed.changes_seen_min as f64),
        format_number(feed.changes_seen_max as f64),
        feed.reconnects,
        feed.snapshots_after_start,
        figure(feed.delivery_ms, |s| s.p50),
        figure(feed.delivery_ms, |s| s.p99),
        figure(feed.delivery_ms, |s| s.max),
        feed.subscribers_checked,
        figure(feed.delivery_to_all_ms, |s| s.p50),
        figure(feed.delivery_to_all_ms, |s| s.p99),
        figure(feed.delivery_to_all_ms, |s| s.max),
    ));
    if !run.timeline.is_empty() {
        html.push_str(&seats_chart(&run.timeline).render());
    }
    if !run.steps.is_empty() {
        html.push_str(&latency_chart(&run.steps).render());
    }
    if !run.deliveries.is_empty() {
        html.push_str(&delivery_chart(&run.deliveries).render());
    }
    html
}

fn counts_table(what: &str, unit: &str, counts: &BTreeMap<String, u64>) -> String {
    let mut html = format!(
        "<table><tr><th>{}</th><th>{}</th></tr>",
        escape(what),
        escape(unit)
    );
    for (name, count) in counts {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td></tr>",
            escape(name),
            format_number(*count as f64)
        ));
    }
    html.push_str("</table>");
    html
}

/// Free, held and sold seats through the sale, as the first subscriber's availability events told them.
fn seats_chart(timeline: &[(f64, u64, u64, u64)]) -> Chart {
    let line = |name: &str, color, pick: fn(&(f64, u64, u64, u64)) -> u64| {
        Series::new(name, color, Mark::Line).points(
            timeline
                .iter()
                .map(|point| (point.0 / 1000.0, pick(point) as f64))
                .collect(),
        )
    };
    Chart::new(
        "Seats through the sale (the live feed's availability)",
        "time since the gate opened (s)",
        "seats",
    )
    .series(line("free", GREEN, |p| p.1))
    .series(line("held", ORANGE, |p| p.2))
    .series(line("sold", BLUE, |p| p.3))
}

/// p50 and p99 of each kind of request, by when it was answered.
fn latency_chart(steps: &[Step]) -> Chart {
    let end = steps
        .iter()
        .map(|s| s.done_ms / 1000.0)
        .fold(0.0, f64::max)
        .max(0.001);
    let mut chart = Chart::new(
        "Request latency over time, by when it was answered",
        "time since the gate opened (s)",
        "latency (ms)",
    );
    for (kind, colors) in [
        ("hold", (BLUE, GREY)),
        ("purchase", (VERMILLION, ORANGE)),
        ("cancel", (GREEN, PURPLE)),
    ] {
        let points: Vec<(f64, f64)> = steps
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| (s.done_ms.max(0.0) / 1000.0, s.done_ms - s.sent_ms))
            .collect();
        if points.is_empty() {
            continue;
        }
        let slices = bands(&points, 0.0, end, TIME_SLICES);
        chart = chart
            .series(
                Series::new(format!("{kind} p50"), colors.0, Mark::Line)
                    .points(slices.iter().map(|b| (b.at, b.p50)).collect()),
            )
            .series(
                Series::new(format!("{kind} p99"), colors.1, Mark::Line)
                    .points(slices.iter().map(|b| (b.at, b.p99)).collect()),
            );
    }
    chart
}

/// How long clicks took to reach the subscribers' screens.
fn delivery_chart(deliveries: &[f64]) -> Chart {
    let high = deliveries.iter().copied().fold(0.0, f64::max).max(0.001);
    let bins = histogram(deliveries, 0.0, high, HISTOGRAM_BINS);
    let width = high / HISTOGRAM_BINS as f64;
    Chart::new(
        "From a click to the change on a subscriber's screen",
        "delay (ms)",
        "deliveries",
    )
    .series(
        Series::new("", BLUE, Mark::Bars { width })
            .points(bins.iter().map(|bin| (bin.low, bin.count as f64)).collect()),
    )
}

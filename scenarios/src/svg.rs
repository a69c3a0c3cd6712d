//! Charts as self-contained SVG: axes with round ticks (linear or logarithmic), lines, points, bars, labelled
//! reference lines and a legend; and a horizontal bar chart for comparing a few figures. No script, no external
//! resource: a report opens anywhere, offline.

use std::fmt::Write as _;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 380.0;
const MARGIN_LEFT: f64 = 78.0;
const MARGIN_RIGHT: f64 = 24.0;
const MARGIN_TOP: f64 = 40.0;
const MARGIN_BOTTOM: f64 = 52.0;
/// Height of one row of the legend, below the chart.
const LEGEND_ROW_HEIGHT: f64 = 18.0;
/// Ticks an axis aims for; the round step chosen gives between about half and twice as many.
const TICKS_TARGET: usize = 6;

/// Colours that stay apart for the common kinds of colour blindness (Okabe and Ito).
pub const BLUE: &str = "#0072B2";
pub const ORANGE: &str = "#E69F00";
pub const GREEN: &str = "#009E73";
pub const VERMILLION: &str = "#D55E00";
pub const PURPLE: &str = "#CC79A7";
pub const GREY: &str = "#777777";

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scale {
    Linear,
    /// Base 10; every value drawn must be positive.
    Log,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mark {
    Line,
    Points,
    LineAndPoints,
    /// Bars from the x axis, each `width` wide in data units starting at its x.
    Bars {
        width: f64,
    },
}

#[derive(Clone, Debug)]
pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub mark: Mark,
    pub points: Vec<(f64, f64)>,
    pub labels: Labels,
}

/// What is written beside each point of a series.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    None,
    /// Its y value.
    Values,
    /// One text per point.
    Texts(Vec<String>),
}

impl Series {
    pub fn new(name: impl Into<String>, color: &'static str, mark: Mark) -> Self {
        Self {
            name: name.into(),
            color,
            mark,
            points: Vec::new(),
            labels: Labels::None,
        }
    }

    pub fn points(mut self, points: Vec<(f64, f64)>) -> Self {
        self.points = points;
        self
    }

    pub fn labelled(mut self) -> Self {
        self.labels = Labels::Values;
        self
    }

    pub fn texts(mut self, texts: Vec<String>) -> Self {
        assert_eq!(texts.len(), self.points.len(), "one text per point");
        self.labels = Labels::Texts(texts);
        self
    }
}

/// A dashed reference line across the plot at `value` on the y axis (`horizontal`) or the x axis.
#[derive(Clone, Debug)]
pub struct Rule {
    pub horizontal: bool,
    pub value: f64,
    pub label: String,
    pub color: &'static str,
}

#[derive(Clone, Debug)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_scale: Scale,
    pub y_scale: Scale,
    pub series: Vec<Series>,
    pub rules: Vec<Rule>,
    /// Start the y axis at zero (for counts and latencies on a linear axis).
    pub y_from_zero: bool,
}

impl Chart {
    pub fn new(
        title: impl Into<String>,
        x_label: impl Into<String>,
        y_label: impl Into<String>,
    ) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            series: Vec::new(),
            rules: Vec::new(),
            y_from_zero: true,
        }
    }

    pub fn series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    pub fn rule(
        mut self,
        horizontal: bool,
        value: f64,
        label: impl Into<String>,
        color: &'static str,
    ) -> Self {
        self.rules.push(Rule {
            horizontal,
            value,
            label: label.into(),
            color,
        });
        self
    }

    pub fn log_x(mut self) -> Self {
        self.x_scale = Scale::Log;
        self
    }

    pub fn log_y(mut self) -> Self {
        self.y_scale = Scale::Log;
        self.y_from_zero = false;
        self
    }

    /// The chart as an `<svg>` element.
    pub fn render(&self) -> String {
        let mut xs: Vec<f64> = Vec::new();
        let mut ys: Vec<f64> = Vec::new();
        for series in &self.series {
            for &(x, y) in &series.points {
                xs.push(x);
                ys.push(y);
                if let Mark::Bars { width } = series.mark {
                    xs.push(x + width);
                }
            }
        }
        for rule in &self.rules {
            if rule.horizontal {
                ys.push(rule.value);
            } else {
                xs.push(rule.value);
            }
        }
        if self.y_from_zero {
            ys.push(0.0);
        }
        let legend = self.legend_layout();
        let legend_rows = legend.iter().map(|(_, row, _)| row + 1).max().unwrap_or(0);
        let mut svg = open_svg_sized(
            &self.title,
            WIDTH,
            HEIGHT + LEGEND_ROW_HEIGHT * legend_rows as f64,
        );
        let (Some(x_axis), Some(y_axis)) = (
            Axis::fit(&xs, self.x_scale, MARGIN_LEFT, WIDTH - MARGIN_RIGHT),
            Axis::fit(&ys, self.y_scale, HEIGHT - MARGIN_BOTTOM, MARGIN_TOP),
        ) else {
            let _ = write!(
                svg,
                r#"<text x="{}" y="{}" text-anchor="middle" fill="{GREY}">no data</text></svg>"#,
                WIDTH / 2.0,
                HEIGHT / 2.0
            );
            return svg;
        };
        self.draw_axes(&mut svg, &x_axis, &y_axis);
        for series in &self.series {
            draw_series(&mut svg, series, &x_axis, &y_axis);
        }
        for rule in &self.rules {
            draw_rule(&mut svg, rule, &x_axis, &y_axis);
        }
        draw_legend(&mut svg, &legend);
        svg.push_str("</svg>");
        svg
    }

    /// Where each named series' legend entry goes: below the plot and its x label, never over the lines, left to
    /// right in rows as wide as the chart. `(x, row, series)`.
    fn legend_layout(&self) -> Vec<(f64, usize, &Series)> {
        let mut placed = Vec::new();
        let (mut x, mut row) = (MARGIN_LEFT, 0);
        for series in self.series.iter().filter(|s| !s.name.is_empty()) {
            let width = 30.0 + 6.5 * series.name.chars().count() as f64;
            if x + width > WIDTH - MARGIN_RIGHT && x > MARGIN_LEFT {
                (x, row) = (MARGIN_LEFT, row + 1);
            }
            placed.push((x, row, series));
            x += width;
        }
        placed
    }

    fn draw_axes(&self, svg: &mut String, x_axis: &Axis, y_axis: &Axis) {
        let (left, right) = (MARGIN_LEFT, WIDTH - MARGIN_RIGHT);
        let (top, bottom) = (MARGIN_TOP, HEIGHT - MARGIN_BOTTOM);
        for tick in &y_axis.ticks {
            let y = y_axis.place(*tick);
            let _ = write!(
                svg,
                r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#e6e6e6"/><text x="{:.1}" y="{:.1}" text-anchor="end" font-size="11">{}</text>"##,
                left - 6.0,
                y + 4.0,
                format_number(*tick)
            );
        }
        for tick in &x_axis.ticks {
            let x = x_axis.place(*tick);
            let _ = write!(
                svg,
                r##"<line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle" font-size="11">{}</text>"##,
                bottom + 5.0,
                bottom + 18.0,
                format_number(*tick)
            );
        }
        let _ = write!(
            svg,
            r##"<line x1="{left:.1}" y1="{bottom:.1}" x2="{right:.1}" y2="{bottom:.1}" stroke="#333"/><line x1="{left:.1}" y1="{top:.1}" x2="{left:.1}" y2="{bottom:.1}" stroke="#333"/>"##
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="12">{}</text>"#,
            (left + right) / 2.0,
            HEIGHT - 12.0,
            escape(&self.x_label)
        );
        let _ = write!(
            svg,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle" font-size="12">{}</text>"#,
            (top + bottom) / 2.0,
            escape(&self.y_label)
        );
    }
}

/// Draws the legend [`Chart::legend_layout`] placed, in the rows added below the chart.
fn draw_legend(svg: &mut String, legend: &[(f64, usize, &Series)]) {
    for (x, row, series) in legend {
        let y = HEIGHT + LEGEND_ROW_HEIGHT * *row as f64 + 6.0;
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{y:.1}" font-size="11">{}</text>"#,
            y - 10.0,
            series.color,
            x + 18.0,
            escape(&series.name)
        );
    }
}

/// A horizontal bar per figure, its value written at its end: for a few figures of very different sizes, side by
/// side (ours and the study's).
pub struct BarChart {
    pub title: String,
    pub unit: String,
    pub bars: Vec<(String, f64, &'static str)>,
}

impl BarChart {
    pub fn render(&self) -> String {
        const ROW_HEIGHT: f64 = 26.0;
        const LABEL_WIDTH: f64 = 300.0;
        let height = MARGIN_TOP + ROW_HEIGHT * self.bars.len() as f64 + 20.0;
        let mut svg = open_svg_sized(&self.title, WIDTH, height);
        let largest = self
            .bars
            .iter()
            .map(|(_, value, _)| *value)
            .fold(0.0, f64::max);
        let span = WIDTH - LABEL_WIDTH - 110.0;
        for (index, (label, value, color)) in self.bars.iter().enumerate() {
            let y = MARGIN_TOP + ROW_HEIGHT * index as f64;
            let length = if largest > 0.0 {
                (value / largest * span).max(1.0)
            } else {
                1.0
            };
            let _ = write!(
                svg,
                r#"<text x="{:.1}" y="{:.1}" text-anchor="end" font-size="12">{}</text><rect x="{LABEL_WIDTH:.1}" y="{:.1}" width="{length:.1}" height="{:.1}" fill="{color}"/><text x="{:.1}" y="{:.1}" font-size="12">{} {}</text>"#,
                LABEL_WIDTH - 8.0,
                y + 14.0,
                escape(label),
                y + 2.0,
                ROW_HEIGHT - 8.0,
                LABEL_WIDTH + length + 6.0,
                y + 14.0,
                format_number(*value),
                escape(&self.unit)
            );
        }
        svg.push_str("</svg>");
        svg
    }
}

fn open_svg_sized(title: &str, width: f64, height: f64) -> String {
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" role="img"><title>{0}</title><rect width="100%" height="100%" fill="white"/><text x="{1}" y="22" font-size="14" font-weight="bold">{0}</text>"#,
        escape(title),
        MARGIN_LEFT,
    )
}

fn draw_series(svg: &mut String, series: &Series, x_axis: &Axis, y_axis: &Axis) {
    let placed: Vec<(f64, f64)> = series
        .points
        .iter()
        .map(|&(x, y)| (x_axis.place(x), y_axis.place(y)))
        .collect();
    match series.mark {
        Mark::Bars { width } => {
            let base = y_axis.place(y_axis.low);
            for (&(x, _), &(left, top)) in series.points.iter().zip(&placed) {
                let right = x_axis.place(x + width);
                let _ = write!(
                    svg,
                    r#"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                    (right - left - 1.0).max(0.5),
                    (base - top).max(0.0),
                    series.color
                );
            }
        }
        Mark::Line | Mark::LineAndPoints | Mark::Points => {
            if series.mark != Mark::Points && placed.len() > 1 {
                let path: Vec<String> = placed
                    .iter()
                    .map(|(x, y)| format!("{x:.1},{y:.1}"))
                    .collect();
                let _ = write!(
                    svg,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                    path.join(" "),
                    series.color
                );
            }
            if series.mark != Mark::Line {
                for (x, y) in &placed {
                    let _ = write!(
                        svg,
                        r#"<circle cx="{x:.1}" cy="{y:.1}" r="3.5" fill="{}"/>"#,
                        series.color
                    );
                }
            }
        }
    }
    let texts: Vec<String> = match &series.labels {
        Labels::None => return,
        Labels::Values => series
            .points
            .iter()
            .map(|&(_, y)| format_number(y))
            .collect(),
        Labels::Texts(texts) => texts.clone(),
    };
    for (text, (x, y)) in texts.iter().zip(&placed) {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="10" fill="{}">{}</text>"#,
            x + 5.0,
            y - 6.0,
            series.color,
            escape(text)
        );
    }
}

fn draw_rule(svg: &mut String, rule: &Rule, x_axis: &Axis, y_axis: &Axis) {
    let (x1, y1, x2, y2, label_x, label_y, anchor) = if rule.horizontal {
        let y = y_axis.place(rule.value);
        (
            MARGIN_LEFT,
            y,
            WIDTH - MARGIN_RIGHT,
            y,
            MARGIN_LEFT + 6.0,
            y - 4.0,
            "start",
        )
    } else {
        let x = x_axis.place(rule.value);
        (
            x,
            MARGIN_TOP,
            x,
            HEIGHT - MARGIN_BOTTOM,
            x - 4.0,
            MARGIN_TOP + 12.0,
            "end",
        )
    };
    let _ = write!(
        svg,
        r#"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{0}" stroke-dasharray="6 4" stroke-width="1.5"/><text x="{label_x:.1}" y="{label_y:.1}" text-anchor="{anchor}" font-size="11" fill="{0}">{1}</text>"#,
        rule.color,
        escape(&rule.label)
    );
}

/// One axis: its data range after rounding to ticks, and where that range lies in the picture.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    pub scale: Scale,
    pub low: f64,
    pub high: f64,
    pub ticks: Vec<f64>,
    from_px: f64,
    to_px: f64,
}

impl Axis {
    /// The axis that shows every one of `values` (positive ones only on a log scale); `None` without any.
    pub fn fit(values: &[f64], scale: Scale, from_px: f64, to_px: f64) -> Option<Axis> {
        let usable = values
            .iter()
            .copied()
            .filter(|v| v.is_finite() && (scale == Scale::Linear || *v > 0.0));
        let (low, high) = usable.fold(None, |range: Option<(f64, f64)>, v| {
            Some(range.map_or((v, v), |(low, high)| (low.min(v), high.max(v))))
        })?;
        let (low, high, ticks) = match scale {
            Scale::Linear => nice_ticks(low, high, TICKS_TARGET),
            Scale::Log => log_ticks(low, high),
        };
        Some(Axis {
            scale,
            low,
            high,
            ticks,
            from_px,
            to_px,
        })
    }

    /// The picture coordinate of `value`.
    pub fn place(&self, value: f64) -> f64 {
        let share = match self.scale {
            Scale::Linear => (value - self.low) / (self.high - self.low),
            Scale::Log => {
                (value.max(f64::MIN_POSITIVE).log10() - self.low.log10())
                    / (self.high.log10() - self.low.log10())
            }
        };
        self.from_px + share * (self.to_px - self.from_px)
    }
}

/// Round ticks covering `[low, high]`: a step of 1, 2 or 5 times a power of ten, the range widened to whole steps.
/// A range of one value is widened around it.
pub fn nice_ticks(low: f64, high: f64, target: usize) -> (f64, f64, Vec<f64>) {
    assert!(low <= high && target >= 2);
    let (low, high) = if high - low < f64::EPSILON * high.abs().max(1.0) {
        let pad = if low == 0.0 { 1.0 } else { low.abs() * 0.1 };
        (low - pad, high + pad)
    } else {
        (low, high)
    };
    let raw = (high - low) / (target - 1) as f64;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|step| *step >= raw)
        .unwrap_or(10.0 * magnitude);
    let first = (low / step).floor();
    let last = (high / step).ceil();
    let ticks: Vec<f64> = (0..=((last - first) as usize))
        .map(|i| clean((first + i as f64) * step))
        .collect();
    (clean(first * step), clean(last * step), ticks)
}

/// Decades covering `[low, high]` (both positive).
pub fn log_ticks(low: f64, high: f64) -> (f64, f64, Vec<f64>) {
    assert!(low > 0.0 && low <= high);
    let first = low.log10().floor() as i32;
    let last = (high.log10().ceil() as i32).max(first + 1);
    let ticks: Vec<f64> = (first..=last).map(|e| 10f64.powi(e)).collect();
    (ticks[0], ticks[ticks.len() - 1], ticks)
}

/// Drops the floating-point dust of multiplying a step (0.30000000000000004 → 0.3).
fn clean(value: f64) -> f64 {
    let cleaned = (value * 1e9).round() / 1e9;
    if cleaned == 0.0 { 0.0 } else { cleaned }
}

/// A number as a label: thousands separated, at most three significant decimals.
pub fn format_number(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let negative = value < 0.0;
    let value = value.abs();
    let decimals = if value >= 1000.0 || value.fract() == 0.0 {
        0
    } else if value >= 10.0 {
        1
    } else if value >= 1.0 {
        2
    } else {
        3
    };
    let text = format!("{value:.decimals$}");
    let (whole, fraction) = text
        .split_once('.')
        .map_or((text.as_str(), ""), |(w, f)| (w, f));
    let mut grouped = String::new();
    for (index, digit) in whole.chars().enumerate() {
        if index > 0 && (whole.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let fraction = fraction.trim_end_matches('0');
    let sign = if negative { "-" } else { "" };
    if fraction.is_empty() {
        format!("{sign}{grouped}")
    } else {
        format!("{sign}{grouped}.{fraction}")
    }
}

/// Text for SVG and HTML content and attributes.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_range() {
        let check = |low: f64, high: f64, expected: &[f64]| {
            let (first, last, ticks) = nice_ticks(low, high, TICKS_TARGET);
            assert_eq!(ticks, expected, "[{low}, {high}]");
            assert!(first <= low && last >= high);
        };
        check(0.0, 1412.0, &[0.0, 500.0, 1000.0, 1500.0]);
        check(0.0, 10.0, &[0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        check(0.13, 0.61, &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]);
        check(87.7, 178.0, &[80.0, 100.0, 120.0, 140.0, 160.0, 180.0]);
        check(5.0, 5.0, &[4.4, 4.6, 4.8, 5.0, 5.2, 5.4, 5.6]);
        check(0.0, 0.0, &[-1.0, -0.5, 0.0, 0.5, 1.0]);
    }

    #[test]
    fn log_axes_span_whole_decades() {
        assert_eq!(
            log_ticks(3.0, 172_408.0).2,
            [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6]
        );
        assert_eq!(log_ticks(10.0, 10.0).2, [10.0, 100.0]);
        let axis = Axis::fit(&[1.0, 1000.0, -5.0], Scale::Log, 0.0, 300.0).expect("axis");
        assert!((axis.place(10.0) - 100.0).abs() < 1e-9);
        assert!((axis.place(1000.0) - 300.0).abs() < 1e-9);
    }

    #[test]
    fn a_linear_axis_maps_its_range_onto_the_picture() {
        let axis = Axis::fit(&[0.0, 9.0], Scale::Linear, 300.0, 100.0).expect("axis");
        assert_eq!((axis.low, axis.high), (0.0, 10.0));
        assert_eq!(axis.place(0.0), 300.0);
        assert_eq!(axis.place(5.0), 200.0);
        assert!(Axis::fit(&[f64::NAN], Scale::Linear, 0.0, 1.0).is_none());
    }

    #[test]
    fn numbers_read_well() {
        let check = |value: f64, expected: &str| assert_eq!(format_number(value), expected);
        check(172_408.0, "172,408");
        check(31_186.0, "31,186");
        check(87.7, "87.7");
        check(172.408, "172.4");
        check(1.25, "1.25");
        check(0.5, "0.5");
        check(1000.0, "1,000");
        check(100.0, "100");
        check(-2500.0, "-2,500");
        check(0.0, "0");
    }

    #[test]
    fn the_legend_sits_below_the_plot_never_over_its_lines() {
        let mut chart = Chart::new("latency over time", "s", "ms");
        for name in [
            "p50 of the orders answered in this second",
            "p90",
            "p99",
            "max",
            "orders in flight",
        ] {
            chart = chart
                .series(Series::new(name, "#333", Mark::Line).points(vec![(0.0, 1.0), (9.0, 5.0)]));
        }
        let legend = chart.legend_layout();
        assert_eq!(legend.len(), 5);
        let rows = legend
            .iter()
            .map(|(_, row, _)| row + 1)
            .max()
            .expect("rows");
        for (x, _, series) in &legend {
            let width = 30.0 + 6.5 * series.name.chars().count() as f64;
            assert!(
                *x >= MARGIN_LEFT && x + width <= WIDTH - MARGIN_RIGHT + 1.0,
                "{x} {}",
                series.name
            );
        }
        let svg = chart.render();
        let height = HEIGHT + LEGEND_ROW_HEIGHT * rows as f64;
        assert!(svg.contains(&format!(r#"height="{height}""#)), "{svg}");
        // Every legend swatch is below the plot area and its x label.
        let swatches: Vec<f64> = svg
            .split(r#"<rect x=""#)
            .skip(1)
            .filter(|rect| rect.contains(r#"width="12" height="12""#))
            .map(|rect| {
                let y = rect.split(r#"y=""#).nth(1).expect("a y");
                y[..y.find('"').expect("its end")]
                    .parse::<f64>()
                    .expect("a number")
            })
            .collect();
        assert_eq!(swatches.len(), 5);
        assert!(swatches.iter().all(|y| *y >= HEIGHT - 10.0), "{swatches:?}");
    }

    #[test]
    fn charts_are_self_contained_svg() {
        let chart = Chart::new("latency <ms> & more", "x", "y")
            .series(
                Series::new("ours", BLUE, Mark::LineAndPoints)
                    .points(vec![(0.0, 1.0), (350.0, 2.0), (1400.0, 3.0)])
                    .labelled(),
            )
            .series(
                Series::new("bars", ORANGE, Mark::Bars { width: 10.0 }).points(vec![(0.0, 4.0)]),
            )
            .rule(true, 2.5, "study", VERMILLION);
        let svg = chart.render();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("latency &lt;ms&gt; &amp; more"));
        assert!(
            svg.contains("<polyline") && svg.contains("<rect") && svg.contains("stroke-dasharray")
        );
        assert!(!svg.contains("<script") && !svg.contains("href"));
        let empty = Chart::new("nothing", "x", "y").log_y().render();
        assert!(empty.contains("no data") && empty.ends_with("</svg>"));
        let bars = BarChart {
            title: "mean".into(),
            unit: "s".into(),
            bars: vec![("study".into(), 87.7, GREY), ("ours".into(), 1.5, BLUE)],
        }
        .render();
        assert!(bars.contains("87.7 s") && bars.contains("1.5 s"));
    }
}

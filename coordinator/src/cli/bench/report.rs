//! `concord bench --report FILE.svg`: one run as a picture — throughput in
//! each second of the run (the floor beside it) and the latency
//! distribution, under a summary line — in a standalone SVG that any browser
//! (and a Markdown page) shows. Nothing is fetched; no script runs.

use std::fmt::Write as _;

use super::measure::Stats;

/// What the report says besides the measurements.
pub(super) struct Summary {
    /// e.g. "2pc, 2 participants, 64 clients, one call".
    pub title: String,
    /// The one line under the title: throughput, latency, floor, ratio.
    pub line: String,
    /// The transactions/s the machine's floor allows, drawn as a line.
    pub floor_tps: f64,
    /// The command that reproduces the run.
    pub command: String,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 440.0;

/// Text as it may stand in SVG.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round number at or above `value`, for an axis' top.
fn nice(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    for step in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if step * magnitude >= value {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// The SVG of one run.
pub(super) fn svg(summary: &Summary, stats: &Stats) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="system-ui, sans-serif" font-size="12">
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="20" y="28" font-size="17" font-weight="700" fill="#1d232b">{}</text>
<text x="20" y="50" fill="#1d232b">{}</text>
<text x="20" y="{}" fill="#68727d" font-family="ui-monospace, monospace" font-size="11">{}</text>
"##,
        escape(&summary.title),
        escape(&summary.line),
        HEIGHT - 12.0,
        escape(&summary.command),
    );
    throughput_chart(&mut out, summary, stats, 20.0, 80.0, 440.0, 300.0);
    latency_chart(&mut out, stats, 500.0, 80.0, 440.0, 300.0);
    out.push_str("</svg>\n");
    out
}

fn frame(out: &mut String, title: &str, x: f64, y: f64, w: f64, h: f64) {
    let _ = write!(
        out,
        r##"<text x="{x}" y="{}" font-weight="600" fill="#1d232b">{}</text>
<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#dde2e7"/>
"##,
        y - 8.0,
        escape(title)
    );
}

fn throughput_chart(
    out: &mut String,
    summary: &Summary,
    stats: &Stats,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
) {
    frame(
        out,
        "transactions per second, each second of the run",
        x,
        y,
        w,
        h,
    );
    let seconds = stats.per_second();
    let top = nice(
        seconds
            .iter()
            .map(|n| *n as f64)
            .fold(summary.floor_tps, f64::max),
    );
    let step = w / seconds.len().max(1) as f64;
    for (idx, count) in seconds.iter().enumerate() {
        let bar = (*count as f64 / top) * (h - 20.0);
        let _ = writeln!(
            out,
            r##"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{bar:.1}" fill="#2554c7" opacity="0.85"/>"##,
            x + idx as f64 * step + 1.0,
            y + h - bar,
            (step - 2.0).max(1.0),
        );
    }
    if summary.floor_tps > 0.0 {
        let floor_y = y + h - (summary.floor_tps / top) * (h - 20.0);
        let _ = writeln!(
            out,
            r##"<line x1="{x}" y1="{floor_y:.1}" x2="{}" y2="{floor_y:.1}" stroke="#b3261e" stroke-dasharray="5 4"/>
<text x="{}" y="{:.1}" fill="#b3261e" text-anchor="end">floor {:.0}/s</text>"##,
            x + w,
            x + w - 4.0,
            floor_y - 4.0,
            summary.floor_tps
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{}" y="{}" fill="#68727d">{top:.0}/s</text>
<text x="{}" y="{}" fill="#68727d">0 s</text>
<text x="{}" y="{}" fill="#68727d" text-anchor="end">{} s</text>"##,
        x + 4.0,
        y + 14.0,
        x,
        y + h + 16.0,
        x + w,
        y + h + 16.0,
        seconds.len()
    );
}

fn latency_chart(out: &mut String, stats: &Stats, x: f64, y: f64, w: f64, h: f64) {
    frame(
        out,
        "latency: share of transactions done within",
        x,
        y,
        w,
        h,
    );
    if stats.micros.is_empty() {
        return;
    }
    // Up to p99.9, so that one outlier does not flatten the curve; the
    // maximum is written beside it.
    let right = nice(stats.percentile_ms(0.999));
    let mut points = String::new();
    let samples = 200;
    for i in 0..=samples {
        let p = i as f64 / samples as f64;
        let ms = stats.percentile_ms(p).min(right);
        let _ = write!(
            points,
            "{:.1},{:.1} ",
            x + (ms / right) * w,
            y + h - p * (h - 10.0)
        );
    }
    let _ = writeln!(
        out,
        r##"<polyline points="{points}" fill="none" stroke="#1f7a4d" stroke-width="2"/>"##
    );
    for (label, p) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        let ms = stats.percentile_ms(p);
        let px = x + (ms.min(right) / right) * w;
        let py = y + h - p * (h - 10.0);
        let _ = writeln!(
            out,
            r##"<circle cx="{px:.1}" cy="{py:.1}" r="3" fill="#1f7a4d"/>
<text x="{:.1}" y="{:.1}" fill="#1d232b">{label} {ms:.2} ms</text>"##,
            px + 6.0,
            py + 4.0
        );
    }
    let _ = writeln!(
        out,
        r##"<text x="{x}" y="{}" fill="#68727d">0 ms</text>
<text x="{}" y="{}" fill="#68727d" text-anchor="end">{right} ms (max {:.1} ms)</text>
<text x="{}" y="{}" fill="#68727d">100 %</text>"##,
        y + h + 16.0,
        x + w,
        y + h + 16.0,
        stats.percentile_ms(1.0),
        x + 4.0,
        y + 14.0
    );
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_report_draws_every_second_and_escapes_its_text() {
        let stats = Stats {
            micros: (1..=1000).map(|i| i * 10).collect(),
            finished_ms: (0..1000).map(|i| i * 3).collect(),
            errors: 0,
            elapsed: Duration::from_millis(3_000),
        };
        let summary = Summary {
            title: "2pc <one call> & more".into(),
            line: "1,000 tx".into(),
            floor_tps: 500.0,
            command: "concord bench".into(),
        };
        let svg = svg(&summary, &stats);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("2pc &lt;one call&gt; &amp; more"));
        assert_eq!(stats.per_second(), [334, 333, 333]);
        // One bar a second, the floor, and the percentiles.
        assert_eq!(svg.matches("opacity=\"0.85\"").count(), 3);
        assert!(svg.contains("floor 500/s"));
        assert!(svg.contains("p99 9.90 ms"), "{svg}");
    }
}

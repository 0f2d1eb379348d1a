//! A self-contained SVG of the run: latency of every request over time (with per-bucket
//! p50/p95 lines) above completions per bucket by outcome. Hand-written SVG rather than a
//! plotting crate: two simple panels do not justify a font/rendering stack in the build.

use std::fmt::Write as _;

use crate::client::Record;
use crate::outcome::Class;
use crate::report::Report;

const W: f64 = 960.0;
const H: f64 = 640.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
/// Cap on drawn points, so a long soak still gives a file a browser opens quickly.
const MAX_POINTS: usize = 20_000;

/// "Nice" axis step (1, 2 or 5 times a power of ten) giving about `ticks` intervals up to `max`.
pub fn nice_step(max: f64, ticks: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let raw = max / ticks;
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let m = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    m * mag
}

/// Axis maximum: the next multiple of the nice step.
fn axis_max(max: f64, ticks: f64) -> (f64, f64) {
    let step = nice_step(max, ticks);
    (((max / step).ceil().max(1.0)) * step, step)
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct Panel {
    top: f64,
    height: f64,
    x_max: f64,
    y_max: f64,
}

impl Panel {
    fn x(&self, t: f64) -> f64 {
        LEFT + (t / self.x_max).clamp(0.0, 1.0) * (W - LEFT - RIGHT)
    }
    fn y(&self, v: f64) -> f64 {
        self.top + self.height - (v / self.y_max).clamp(0.0, 1.0) * self.height
    }

    fn axes(&self, s: &mut String, y_step: f64, x_step: f64, y_label: &str) {
        let (x0, x1) = (LEFT, W - RIGHT);
        let (y0, y1) = (self.top, self.top + self.height);
        let mut v = 0.0;
        while v <= self.y_max + y_step * 1e-6 {
            let y = self.y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                x0 - 6.0,
                y + 4.0,
                fmt_num(v)
            );
            v += y_step;
        }
        let mut t = 0.0;
        while t <= self.x_max + x_step * 1e-6 {
            let x = self.x(t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{:.1}" stroke="#999"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                y1 + 4.0,
                y1 + 16.0,
                fmt_num(t)
            );
            t += x_step;
        }
        let _ = writeln!(
            s,
            r##"<rect x="{x0}" y="{y0}" width="{:.1}" height="{:.1}" fill="none" stroke="#666"/><text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">{}</text>"##,
            x1 - x0,
            y1 - y0,
            (y0 + y1) / 2.0,
            (y0 + y1) / 2.0,
            esc(y_label)
        );
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn color(c: Class) -> &'static str {
    match c {
        Class::Success => "#1f77b4",
        Class::Rejected | Class::Disconnected => "#9a9a9a",
        Class::Shed | Class::Error | Class::StreamError => "#ff7f0e",
        Class::Lost(_) | Class::Failure(_) => "#d62728",
    }
}

pub fn svg(report: &Report, records: &[Record]) -> String {
    let mut s = String::new();
    let x_max_raw = report.wall_s.max(1e-3);
    let (x_max, x_step) = axis_max(x_max_raw, 10.0);

    // Latency axis: up to the largest p99-ish value so a few outliers do not flatten the
    // picture; points above are pinned to the top edge.
    let mut lats: Vec<f64> = records.iter().map(|r| r.latency * 1000.0).collect();
    lats.sort_by(f64::total_cmp);
    let top = crate::stats::percentile(&lats, 99.5)
        .unwrap_or(1.0)
        .max(1.0);
    let (lat_max, lat_step) = axis_max(top * 1.1, 5.0);
    let lat = Panel {
        top: 50.0,
        height: 300.0,
        x_max,
        y_max: lat_max,
    };
    let max_done = report
        .timeline
        .iter()
        .map(|b| b.completed)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let (thr_max, thr_step) = axis_max(max_done, 4.0);
    let thr = Panel {
        top: 420.0,
        height: 170.0,
        x_max,
        y_max: thr_max,
    };

    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"##
    );
    let _ = writeln!(s, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let title = format!(
        "flamingo-loadtest {} — {} requests, {:.1} req/s, lost {}, p50 {} ms, p99 {} ms",
        report.label,
        report.counts.sent,
        report.throughput.requests_per_s,
        report.counts.lost,
        report
            .latency_ms
            .as_ref()
            .map_or("-".into(), |l| fmt_num(l.p50_ms)),
        report
            .latency_ms
            .as_ref()
            .map_or("-".into(), |l| fmt_num(l.p99_ms)),
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="24" font-size="14" font-weight="bold">{}</text>"##,
        esc(&title)
    );

    // Panel 1: latency scatter + p50/p95 lines.
    lat.axes(&mut s, lat_step, x_step, "latency (ms)");
    let stride = records.len().div_ceil(MAX_POINTS).max(1);
    for r in records.iter().step_by(stride) {
        let x = lat.x(r.sent_at + r.latency);
        let y = lat.y(r.latency * 1000.0);
        let _ = writeln!(
            s,
            r##"<circle cx="{x:.1}" cy="{y:.1}" r="1.6" fill="{}" fill-opacity="0.45"/>"##,
            color(r.class)
        );
    }
    let width = report.timeline.get(1).map_or(1.0, |b| b.t) - report.timeline[0].t;
    for (pick, stroke) in [(0usize, "#2ca02c"), (1usize, "#000")] {
        let pts: Vec<String> = report
            .timeline
            .iter()
            .filter_map(|b| {
                let v = if pick == 0 { b.p50_ms } else { b.p95_ms }?;
                Some(format!("{:.1},{:.1}", lat.x(b.t + width / 2.0), lat.y(v)))
            })
            .collect();
        if pts.len() > 1 {
            let _ = writeln!(
                s,
                r##"<polyline points="{}" fill="none" stroke="{stroke}" stroke-width="1.5"/>"##,
                pts.join(" ")
            );
        }
    }
    let legend = [
        ("#1f77b4", "success"),
        ("#9a9a9a", "rejected / disconnected"),
        ("#ff7f0e", "shed / error"),
        ("#d62728", "lost / failure"),
        ("#2ca02c", "p50 per bucket"),
        ("#000", "p95 per bucket"),
    ];
    let mut x = LEFT + 10.0;
    for (c, name) in legend {
        let _ = writeln!(
            s,
            r##"<rect x="{x}" y="36" width="10" height="10" fill="{c}"/><text x="{:.1}" y="45">{name}</text>"##,
            x + 14.0
        );
        // ~6.5 px per character at font-size 11, plus the swatch and a gap.
        x += 34.0 + name.len() as f64 * 6.5;
    }

    // Panel 2: completions per bucket, stacked by outcome.
    thr.axes(
        &mut s,
        thr_step,
        x_step,
        &format!("completed / {}s", fmt_num(width)),
    );
    let bar_w = (thr.x(width) - thr.x(0.0) - 1.0).max(0.5);
    for b in &report.timeline {
        let mut base = 0.0;
        for (n, c) in [
            (b.ok, "#1f77b4"),
            (b.errors, "#ff7f0e"),
            (b.lost + b.failures, "#d62728"),
        ] {
            if n == 0 {
                continue;
            }
            let n = n as f64;
            let (y_top, y_bot) = (thr.y(base + n), thr.y(base));
            let _ = writeln!(
                s,
                r##"<rect x="{:.1}" y="{y_top:.1}" width="{bar_w:.1}" height="{:.1}" fill="{c}"/>"##,
                thr.x(b.t) + 0.5,
                (y_bot - y_top).max(0.5)
            );
            base += n;
        }
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">time since start (s)</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 14.0
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(100.0, 5.0), 20.0);
        assert_eq!(nice_step(7.0, 5.0), 2.0);
        assert!((nice_step(0.3, 3.0) - 0.1).abs() < 1e-12);
        assert_eq!(nice_step(0.0, 5.0), 1.0);
        assert_eq!(axis_max(93.0, 5.0), (100.0, 20.0));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(esc("<a&b>"), "&lt;a&amp;b&gt;");
    }
}

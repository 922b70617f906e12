//! Small SVG charts for reports and studies: line charts over categorical x positions laid
//! out as a grid of panels with one legend ([`panels_svg`]), and grouped bar charts
//! ([`bars_svg`]). Output is a pure function of the input (fixed decimals), so the same data
//! gives the same bytes.
//!
//! The certificate's own accuracy-vs-eps curve ([`crate::report::CertifyReport::svg`]) is
//! drawn by the report itself (gate markers, threshold); these are the generic charts of
//! `iocane study`.

use std::fmt::Write;

use crate::report::esc;

/// Colours given to series in order (matplotlib's first four).
pub const PALETTE: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

/// One line of a [`LineChart`]: a name for the legend and one value per x position
/// (`NaN` leaves a gap).
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// One value per x tick.
    pub values: Vec<f64>,
}

/// One panel: a title, categorical x ticks, a y range and the series.
#[derive(Clone, Debug, PartialEq)]
pub struct LineChart {
    /// Title above the panel.
    pub title: String,
    /// Label under the x axis.
    pub x_label: String,
    /// Tick labels, one per x position (evenly spaced).
    pub x_ticks: Vec<String>,
    /// y axis range `(lo, hi)`; values are clamped into it.
    pub y_range: (f64, f64),
    /// Show y ticks as percentages (`0.5` -> `50%`).
    pub percent: bool,
    /// The lines; series `i` gets colour `PALETTE[i % 4]` and marker shape `i % 4`.
    pub series: Vec<Series>,
}

const PANEL_W: f64 = 300.0;
const PANEL_H: f64 = 230.0;
const LEGEND_W: f64 = 170.0;

fn marker(o: &mut String, i: usize, cx: f64, cy: f64, color: &str) {
    let _ = match i % 4 {
        0 => writeln!(
            o,
            "<circle cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"4\" fill=\"white\" stroke=\"{color}\" stroke-width=\"2\"/>"
        ),
        1 => {
            writeln!(o, "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"7\" height=\"7\" fill=\"{color}\"/>", cx - 3.5, cy - 3.5)
        }
        2 => writeln!(
            o,
            "<path d=\"M{cx:.1},{:.1} L{:.1},{cy:.1} L{cx:.1},{:.1} L{:.1},{cy:.1} Z\" fill=\"{color}\"/>",
            cy - 4.5,
            cx + 4.5,
            cy + 4.5,
            cx - 4.5
        ),
        _ => writeln!(
            o,
            "<path d=\"M{cx:.1},{:.1} L{:.1},{:.1} L{:.1},{:.1} Z\" fill=\"{color}\"/>",
            cy - 4.5,
            cx + 4.5,
            cy + 4.0,
            cx - 4.5,
            cy + 4.0
        ),
    };
}

fn tick(v: f64, percent: bool) -> String {
    if percent {
        format!("{:.0}%", 100.0 * v)
    } else {
        format!("{v:.2}")
    }
}

/// One panel with its top-left corner at (ox, oy).
fn panel(o: &mut String, c: &LineChart, ox: f64, oy: f64) {
    let (left, right, top, bottom) = (ox + 52.0, ox + PANEL_W - 12.0, oy + 30.0, oy + PANEL_H - 44.0);
    let (lo, hi) = c.y_range;
    let span = if hi > lo { hi - lo } else { 1.0 };
    let n = c.x_ticks.len().max(1);
    let x = |i: usize| if n == 1 { (left + right) / 2.0 } else { left + (right - left) * i as f64 / (n - 1) as f64 };
    let y = |v: f64| bottom - (bottom - top) * ((v.clamp(lo, hi.max(lo)) - lo) / span);
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"13\">{}</text>",
        (left + right) / 2.0,
        oy + 18.0,
        esc(&c.title)
    );
    for t in 0..=4 {
        let v = lo + span * t as f64 / 4.0;
        let _ = writeln!(
            o,
            "<line x1=\"{left:.1}\" y1=\"{0:.1}\" x2=\"{right:.1}\" y2=\"{0:.1}\" stroke=\"#e5e5e5\"/>",
            y(v)
        );
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 5.0,
            y(v) + 4.0,
            tick(v, c.percent)
        );
    }
    let _ = writeln!(
        o,
        "<line x1=\"{left:.1}\" y1=\"{bottom:.1}\" x2=\"{right:.1}\" y2=\"{bottom:.1}\" stroke=\"black\"/>"
    );
    let _ =
        writeln!(o, "<line x1=\"{left:.1}\" y1=\"{top:.1}\" x2=\"{left:.1}\" y2=\"{bottom:.1}\" stroke=\"black\"/>");
    for (i, t) in c.x_ticks.iter().enumerate() {
        let _ = writeln!(
            o,
            "<line x1=\"{0:.1}\" y1=\"{bottom:.1}\" x2=\"{0:.1}\" y2=\"{1:.1}\" stroke=\"black\"/>",
            x(i),
            bottom + 4.0
        );
        let _ =
            writeln!(o, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>", x(i), bottom + 17.0, esc(t));
    }
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
        (left + right) / 2.0,
        bottom + 34.0,
        esc(&c.x_label)
    );
    for (si, s) in c.series.iter().enumerate() {
        let color = PALETTE[si % PALETTE.len()];
        // Consecutive finite points form one polyline; a NaN breaks the line.
        let mut run: Vec<String> = Vec::new();
        let flush = |run: &mut Vec<String>, o: &mut String| {
            if run.len() > 1 {
                let _ = writeln!(
                    o,
                    "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>",
                    run.join(" ")
                );
            }
            run.clear();
        };
        for (i, v) in s.values.iter().enumerate().take(n) {
            if v.is_finite() {
                run.push(format!("{:.1},{:.1}", x(i), y(*v)));
            } else {
                flush(&mut run, o);
            }
        }
        flush(&mut run, o);
        for (i, v) in s.values.iter().enumerate().take(n) {
            if v.is_finite() {
                marker(o, si, x(i), y(*v), color);
            }
        }
    }
}

/// Line-chart panels in a grid of `columns` columns, with the legend of the first panel's
/// series to the right of the grid, under an overall `title`.
pub fn panels_svg(title: &str, charts: &[LineChart], columns: usize) -> String {
    let cols = columns.clamp(1, charts.len().max(1));
    let rows = charts.len().div_ceil(cols).max(1);
    let (w, h) = (PANEL_W * cols as f64 + LEGEND_W, 36.0 + PANEL_H * rows as f64);
    let mut o = String::new();
    let _ = writeln!(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\" font-size=\"11\">");
    let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        PANEL_W * cols as f64 / 2.0,
        esc(title)
    );
    for (i, c) in charts.iter().enumerate() {
        panel(&mut o, c, PANEL_W * (i % cols) as f64, 36.0 + PANEL_H * (i / cols) as f64);
    }
    if let Some(first) = charts.first() {
        let lx = PANEL_W * cols as f64 + 10.0;
        for (si, s) in first.series.iter().enumerate() {
            let color = PALETTE[si % PALETTE.len()];
            let ly = 70.0 + 22.0 * si as f64;
            let _ = writeln!(o, "<line x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{color}\" stroke-width=\"2\"/>", lx + 26.0);
            marker(&mut o, si, lx + 13.0, ly, color);
            let _ = writeln!(o, "<text x=\"{:.1}\" y=\"{:.1}\">{}</text>", lx + 32.0, ly + 4.0, esc(&s.name));
        }
    }
    let _ = writeln!(o, "</svg>");
    o
}

/// A grouped bar chart of values in `[0, 1]` (drawn as percentages): one group per entry of
/// `groups` (its label and one value per entry of `bars`), bars coloured by `bars` with a
/// legend, each bar labelled with its value.
pub fn bars_svg(title: &str, bars: &[&str], groups: &[(String, Vec<f64>)]) -> String {
    let nb = bars.len().max(1);
    let group_w = 34.0 * nb as f64 + 26.0;
    let (left, top, bottom) = (56.0, 50.0, 300.0);
    let right = left + group_w * groups.len().max(1) as f64;
    let (w, h) = (right + 30.0, 380.0);
    let y = |v: f64| bottom - (bottom - top) * v.clamp(0.0, 1.0);
    let mut o = String::new();
    let _ = writeln!(o, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w:.0}\" height=\"{h:.0}\" font-family=\"sans-serif\" font-size=\"11\">");
    let _ = writeln!(o, "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>");
    let _ = writeln!(
        o,
        "<text x=\"{:.1}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>",
        w / 2.0,
        esc(title)
    );
    for t in 0..=4 {
        let v = t as f64 / 4.0;
        let _ = writeln!(
            o,
            "<line x1=\"{left:.1}\" y1=\"{0:.1}\" x2=\"{right:.1}\" y2=\"{0:.1}\" stroke=\"#e5e5e5\"/>",
            y(v)
        );
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
            left - 5.0,
            y(v) + 4.0,
            100.0 * v
        );
    }
    for (bi, name) in bars.iter().enumerate() {
        let lx = left + 10.0 + 130.0 * bi as f64;
        let _ = writeln!(
            o,
            "<rect x=\"{lx:.1}\" y=\"32\" width=\"12\" height=\"12\" fill=\"{}\"/>",
            PALETTE[bi % PALETTE.len()]
        );
        let _ = writeln!(o, "<text x=\"{:.1}\" y=\"42\">{}</text>", lx + 17.0, esc(name));
    }
    for (gi, (label, values)) in groups.iter().enumerate() {
        let gx = left + group_w * gi as f64 + 13.0;
        for (bi, v) in values.iter().enumerate().take(nb) {
            let bx = gx + 34.0 * bi as f64;
            let v = if v.is_finite() { *v } else { 0.0 };
            let _ = writeln!(
                o,
                "<rect x=\"{bx:.1}\" y=\"{:.1}\" width=\"30\" height=\"{:.1}\" fill=\"{}\"/>",
                y(v),
                bottom - y(v),
                PALETTE[bi % PALETTE.len()]
            );
            let _ = writeln!(
                o,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{:.1}</text>",
                bx + 15.0,
                y(v) - 3.0,
                100.0 * v
            );
        }
        let _ = writeln!(
            o,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            gx + 17.0 * nb as f64,
            bottom + 18.0,
            esc(label)
        );
    }
    let _ = writeln!(
        o,
        "<line x1=\"{left:.1}\" y1=\"{bottom:.1}\" x2=\"{right:.1}\" y2=\"{bottom:.1}\" stroke=\"black\"/>"
    );
    let _ = writeln!(o, "</svg>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_draw_every_point_and_break_lines_at_nan() {
        let chart = |title: &str| LineChart {
            title: title.into(),
            x_label: "width".into(),
            x_ticks: vec!["x1".into(), "x2".into(), "x4".into()],
            y_range: (0.0, 1.0),
            percent: true,
            series: vec![
                Series { name: "natural".into(), values: vec![0.1, 0.5, 0.9] },
                Series { name: "pgd <eps>".into(), values: vec![0.2, f64::NAN, 0.8] },
            ],
        };
        let svg = panels_svg("capacity", &[chart("clean"), chart("pgd")], 2);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Two panels x (one 3-point line; the NaN series has no line of 2+ points).
        assert_eq!(svg.matches("<polyline").count(), 2);
        // Markers: 3 circles + 2 squares per panel, plus one of each in the legend.
        assert_eq!(svg.matches("<circle").count(), 7);
        assert_eq!(svg.matches("<rect x=").count(), 5);
        assert!(svg.contains("pgd &lt;eps&gt;") && !svg.contains("<eps>"));
        assert!(svg.contains(">50%<"));
        assert_eq!(svg, panels_svg("capacity", &[chart("clean"), chart("pgd")], 2), "deterministic");
    }

    #[test]
    fn bars_have_one_rect_per_value_and_label_it() {
        let groups = vec![("natural".to_string(), vec![0.99, 0.02]), ("D_R".to_string(), vec![0.9, 0.4])];
        let svg = bars_svg("features", &["clean", "PGD"], &groups);
        // 4 bars + 2 legend boxes + the background.
        assert_eq!(svg.matches("<rect").count(), 7);
        assert!(svg.contains(">99.0<") && svg.contains(">40.0<") && svg.contains(">D_R<"));
    }
}

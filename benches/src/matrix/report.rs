//! The report's three forms: a markdown table, JSON, and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{Error, Payload, Report, RowKind};

/// Three significant figures or so, without scientific notation.
fn figure(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn optional(v: Option<f64>, suffix: &str) -> String {
    v.map_or_else(|| "–".to_owned(), |v| format!("{}{suffix}", figure(v)))
}

impl Report {
    /// The rows as a markdown table, grouped by payload.
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| row | payload | p50 µs | p99 µs | calls/s, 1 in flight | calls/s, 64 in flight \
             | MB/s | floor | p50 ÷ floor | MB/s ÷ floor |\n\
             |---|---|---:|---:|---:|---:|---:|---|---:|---:|\n",
        );
        for payload in Payload::ALL {
            for row in self.rows.iter().filter(|r| r.payload == payload) {
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
                    row.name,
                    payload.label(),
                    figure(row.p50_us),
                    figure(row.p99_us),
                    row.calls_per_sec_1,
                    row.calls_per_sec_64
                        .map_or_else(|| "–".to_owned(), |v| format!("{v:.0}")),
                    optional(row.mb_per_sec, ""),
                    row.floor.as_deref().unwrap_or("–"),
                    optional(row.p50_vs_floor, "×"),
                    optional(row.mb_vs_floor, "×"),
                );
            }
        }
        out
    }

    /// Writes the report as pretty-printed JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer_pretty(file, self)?;
        Ok(())
    }

    /// Draws p50 latency per payload, one line per row name, on a log scale, as SVG.
    pub fn write_svg(&self, path: &Path) -> Result<(), Error> {
        let payloads: Vec<Payload> = Payload::ALL
            .into_iter()
            .filter(|p| self.rows.iter().any(|r| r.payload == *p))
            .collect();
        let mut names: Vec<(&str, RowKind)> = Vec::new();
        for row in &self.rows {
            if !names.iter().any(|(n, _)| *n == row.name) {
                names.push((&row.name, row.kind));
            }
        }
        let (lo, hi) = self
            .rows
            .iter()
            .map(|r| r.p50_us)
            .filter(|v| v.is_finite() && *v > 0.0)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            return Err("no rows to draw".into());
        }
        let slots = payloads.len() as i32;

        let root = SVGBackend::new(path, (1100, 640)).into_drawing_area();
        root.fill(&WHITE)?;
        // The chart on the left, the legend in its own column on the right, clear of the lines.
        let (plot, legend) = root.split_horizontally(840);
        let mut chart = ChartBuilder::on(&plot)
            .caption(
                "Courier: round-trip p50 by payload (log scale; lower is better)",
                ("sans-serif", 20),
            )
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(70)
            .build_cartesian_2d(
                (0..slots).into_segmented(),
                ((lo / 1.5)..(hi * 1.5)).log_scale(),
            )?;
        chart
            .configure_mesh()
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => payloads
                    .get(*i as usize)
                    .map_or_else(String::new, |p| p.label().to_owned()),
                SegmentValue::Last => String::new(),
            })
            .y_label_formatter(&|y| figure(*y))
            .x_desc("payload")
            .y_desc("round trip p50, µs")
            .draw()?;
        for (i, (name, kind)) in names.iter().enumerate() {
            let colour = Palette99::pick(i).to_rgba();
            // Floors and peers are thin; Courier's own rows stand out.
            let width = if *kind == RowKind::Courier { 3 } else { 1 };
            let points: Vec<(SegmentValue<i32>, f64)> = payloads
                .iter()
                .enumerate()
                .filter_map(|(x, p)| {
                    self.rows
                        .iter()
                        .find(|r| r.name == *name && r.payload == *p)
                        .map(|r| (SegmentValue::CenterOf(x as i32), r.p50_us))
                })
                .collect();
            chart.draw_series(LineSeries::new(points.clone(), colour.stroke_width(width)))?;
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, width + 2, colour.filled())),
            )?;
            let y = 60 + 26 * i as i32;
            legend.draw(&PathElement::new(
                vec![(10, y), (40, y)],
                colour.stroke_width(width),
            ))?;
            legend.draw(&Text::new(
                name.to_string(),
                (48, y - 7),
                ("sans-serif", 14).into_font(),
            ))?;
        }
        root.present()?;
        Ok(())
    }
}

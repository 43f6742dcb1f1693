//! The report's three forms: a markdown table, JSON, and an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::{Error, Payload, Report, RowKind};

/// The size of one transport's panel in the chart, and of the legend at its foot.
const PANEL_WIDTH: u32 = 700;
const PANEL_HEIGHT: u32 = 520;
const LEGEND_HEIGHT: u32 = 130;

/// Courier's rows: strong colours, told apart from each other and from the floors' greys.
const COURIER: [RGBColor; 6] = [
    RGBColor(0x1f, 0x4e, 0xb4),
    RGBColor(0xd9, 0x5f, 0x02),
    RGBColor(0x7b, 0x2c, 0xbf),
    RGBColor(0xc2, 0x18, 0x5b),
    RGBColor(0x00, 0x80, 0x80),
    RGBColor(0x8c, 0x56, 0x1b),
];
/// Floors: greys, dashed.
const FLOORS: [RGBColor; 3] = [
    RGBColor(0x33, 0x33, 0x33),
    RGBColor(0x77, 0x77, 0x77),
    RGBColor(0xaa, 0xaa, 0xaa),
];
/// Peers: greens, thin.
const PEERS: [RGBColor; 2] = [RGBColor(0x2e, 0x8b, 0x32), RGBColor(0x6b, 0xa3, 0x1f)];

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
        out.push_str(&self.against_peers());
        out
    }

    /// Courier's network rows against the TLS peers of the same run and payload: p50 (lower
    /// is better), calls/s at 64 in flight and MB/s (higher is better), each as Courier's
    /// figure divided by the peer's. Empty when the run had no TLS peers.
    pub fn against_peers(&self) -> String {
        let peer = |name: &str, payload: Payload| {
            self.rows
                .iter()
                .find(|r| r.name == name && r.payload == payload)
        };
        let mut out = String::new();
        for row in self.rows.iter().filter(|r| {
            r.kind == RowKind::Courier && (r.name.ends_with("/quic") || r.name.ends_with("/tcp"))
        }) {
            let (Some(tarpc), tonic) = (
                peer(super::TARPC_TLS, row.payload),
                peer(super::TONIC_TLS, row.payload),
            ) else {
                continue;
            };
            if out.is_empty() {
                let _ = write!(
                    out,
                    "\nNetwork: {}; QUIC levers: {}. Courier ÷ peer, same run:\n\n\
                     | row | payload | p50 ÷ tarpc+TLS | 64 in flight ÷ tarpc+TLS \
                     | MB/s ÷ tarpc+TLS | 64 in flight ÷ tonic |\n\
                     |---|---|---:|---:|---:|---:|\n",
                    if self.network.is_empty() {
                        "loopback"
                    } else {
                        &self.network
                    },
                    if self.quic.is_empty() {
                        "defaults"
                    } else {
                        &self.quic
                    },
                );
            }
            let ratio = |ours: Option<f64>, theirs: Option<f64>| {
                optional(ours.zip(theirs).map(|(a, b)| a / b), "×")
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} |",
                row.name,
                row.payload.label(),
                ratio(Some(row.p50_us), Some(tarpc.p50_us)),
                ratio(row.calls_per_sec_64, tarpc.calls_per_sec_64),
                ratio(row.mb_per_sec, tarpc.mb_per_sec),
                ratio(row.calls_per_sec_64, tonic.and_then(|t| t.calls_per_sec_64)),
            );
        }
        out
    }

    /// Writes the report as pretty-printed JSON.
    pub fn write_json(&self, path: &Path) -> Result<(), Error> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        serde_json::to_writer_pretty(file, self)?;
        Ok(())
    }

    /// Draws p50 latency per payload on a log scale, as SVG: one panel per transport, each
    /// with its own scale and legend; Courier's rows thick, peers thin, floors dashed.
    pub fn write_svg(&self, path: &Path) -> Result<(), Error> {
        let mut groups: Vec<&str> = Vec::new();
        for row in &self.rows {
            if !groups.contains(&row.group.as_str()) {
                groups.push(&row.group);
            }
        }
        if groups.is_empty() {
            return Err("no rows to draw".into());
        }
        let columns = groups.len().min(2);
        let lines = groups.len().div_ceil(columns);
        let (width, height) = (
            PANEL_WIDTH * columns as u32,
            PANEL_HEIGHT * lines as u32 + 40,
        );
        let root = SVGBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let (title, body) = root.split_vertically(40);
        title.draw(&Text::new(
            "Courier: round-trip p50 by payload, per transport (log scale; lower is better)",
            (16, 10),
            ("sans-serif", 20).into_font(),
        ))?;
        let panels = body.split_evenly((lines, columns));
        for (group, panel) in groups.iter().zip(panels.iter()) {
            self.draw_panel(group, panel)?;
        }
        root.present()?;
        Ok(())
    }

    /// One transport's panel: its rows' p50 by payload, and their legend beneath.
    fn draw_panel<DB: DrawingBackend>(
        &self,
        group: &str,
        panel: &DrawingArea<DB, plotters::coord::Shift>,
    ) -> Result<(), Error>
    where
        DB::ErrorType: 'static,
    {
        let rows: Vec<_> = self.rows.iter().filter(|r| r.group == group).collect();
        let payloads: Vec<Payload> = Payload::ALL
            .into_iter()
            .filter(|p| rows.iter().any(|r| r.payload == *p))
            .collect();
        let mut names: Vec<(&str, RowKind)> = Vec::new();
        for row in &rows {
            if !names.iter().any(|(n, _)| *n == row.name) {
                names.push((&row.name, row.kind));
            }
        }
        let (lo, hi) = rows
            .iter()
            .map(|r| r.p50_us)
            .filter(|v| v.is_finite() && *v > 0.0)
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        if lo > hi {
            return Ok(());
        }
        let last = payloads.len().saturating_sub(1) as f64;
        let (plot, legend) = panel.split_vertically(PANEL_HEIGHT - LEGEND_HEIGHT);
        let mut chart = ChartBuilder::on(&plot)
            .caption(group, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(64)
            // Half a slot of room on each side of the first and last payloads, no more.
            .build_cartesian_2d(-0.5..(last + 0.5), ((lo / 1.5)..(hi * 1.5)).log_scale())?;
        chart
            .configure_mesh()
            .x_labels(payloads.len())
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() > 0.01 || i < 0.0 {
                    return String::new();
                }
                payloads
                    .get(i as usize)
                    .map_or_else(String::new, |p| p.label().to_owned())
            })
            .disable_x_mesh()
            .y_label_formatter(&|y| figure(*y))
            .y_desc("p50, µs")
            .draw()?;
        let (mut courier, mut floors, mut peers) = (0, 0, 0);
        for (i, (name, kind)) in names.iter().enumerate() {
            let points: Vec<(f64, f64)> = payloads
                .iter()
                .enumerate()
                .filter_map(|(x, p)| {
                    rows.iter()
                        .find(|r| r.name == *name && r.payload == *p)
                        .map(|r| (x as f64, r.p50_us))
                })
                .collect();
            let (style, dashed) = match kind {
                RowKind::Courier => {
                    courier += 1;
                    (
                        COURIER[(courier - 1) % COURIER.len()].stroke_width(3),
                        false,
                    )
                }
                RowKind::Floor => {
                    floors += 1;
                    (FLOORS[(floors - 1) % FLOORS.len()].stroke_width(2), true)
                }
                RowKind::Peer => {
                    peers += 1;
                    (PEERS[(peers - 1) % PEERS.len()].stroke_width(1), false)
                }
            };
            if dashed {
                chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style))?;
            } else {
                chart.draw_series(LineSeries::new(points.clone(), style))?;
            }
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, style.stroke_width + 2, style.color.filled())),
            )?;
            // The legend in two columns under the chart.
            let (column, line) = (i % 2, i / 2);
            let x = 70 + 320 * column as i32;
            let y = 14 + 22 * line as i32;
            let sample = if dashed {
                vec![((x, y), (x + 12, y)), ((x + 18, y), (x + 30, y))]
            } else {
                vec![((x, y), (x + 30, y))]
            };
            for (from, to) in sample {
                legend.draw(&PathElement::new(vec![from, to], style))?;
            }
            legend.draw(&Text::new(
                name.to_string(),
                (x + 38, y - 7),
                ("sans-serif", 13).into_font(),
            ))?;
        }
        Ok(())
    }
}

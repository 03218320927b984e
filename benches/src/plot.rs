//! SVG charts for the bench reports, drawn with `plotters` (SVG backend):
//! grouped horizontal bars (speed ratios, latency percentiles, cluster
//! throughput) and small multiples of lines (throughput against threads).
//!
//! Text is measured with ab_glyph from DejaVu Sans, a system font
//! (Debian's `fonts-dejavu-core`, installed by `scripts/setup.sh --bench`);
//! the SVG names the family `sans-serif`, so viewers draw it with theirs.

use std::sync::OnceLock;

use anyhow::{bail, Context as _};
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Deserialize;

/// Where Debian's fonts-dejavu-core puts the font the charts are measured with.
pub const FONT_PATH: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const FAMILY: &str = "sans-serif";

/// Registers the font once per process.
fn font() -> anyhow::Result<()> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            let bytes = std::fs::read(FONT_PATH).map_err(|e| {
                format!(
                    "reading the chart font {FONT_PATH}: {e} (install fonts-dejavu-core: \
                     scripts/setup.sh --bench)"
                )
            })?;
            // Registered fonts live as long as the process: leak one copy.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
                .map_err(|_| format!("{FONT_PATH} is not a font ab_glyph can read"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Colors for series, in order; a series keeps its color across charts
/// when it keeps its position in [`SERIES_ORDER`].
const PALETTE: [RGBColor; 8] = [
    RGBColor(0x4c, 0x72, 0xb0),
    RGBColor(0xdd, 0x84, 0x52),
    RGBColor(0x55, 0xa8, 0x68),
    RGBColor(0xc4, 0x4e, 0x52),
    RGBColor(0x81, 0x72, 0xb3),
    RGBColor(0x93, 0x78, 0x60),
    RGBColor(0xda, 0x8b, 0xc3),
    RGBColor(0x8c, 0x8c, 0x8c),
];

/// Names that get a fixed color wherever they appear (the bench
/// configurations), so charts side by side agree.
const SERIES_ORDER: [&str; 8] = [
    "native",
    "stock",
    "xfuse-dev",
    "xfuse-uring",
    "xfuse-uring-pt",
    "xfuse-uring-dp",
    "p99",
    "other",
];

fn color_of(name: &str, index: usize) -> RGBColor {
    match SERIES_ORDER.iter().position(|n| *n == name) {
        Some(i) => PALETTE[i],
        None => PALETTE[index % PALETTE.len()],
    }
}

/// A grouped horizontal bar chart: one row per group, one bar per series.
#[derive(Debug, Clone, Deserialize)]
pub struct Bars {
    /// Shown above the chart.
    pub title: String,
    /// What the bars measure, with its unit.
    pub value_label: String,
    /// The rows, top to bottom.
    pub groups: Vec<String>,
    /// Each series has one value per group (`None`: no bar).
    pub series: Vec<Series>,
    /// A logarithmic value axis (ratios): bars start at 1, so a bar to the
    /// left is below 1.
    #[serde(default)]
    pub log: bool,
    /// A vertical line at this value (e.g. 1 for "as fast as the reference").
    #[serde(default)]
    pub reference: Option<f64>,
}

/// One series of a [`Bars`] chart.
#[derive(Debug, Clone, Deserialize)]
pub struct Series {
    /// The legend's name (a bench configuration keeps its color).
    pub name: String,
    /// One value per group, in the groups' order.
    pub values: Vec<Option<f64>>,
}

/// Small multiples: one panel per entry, each with lines over a shared x.
#[derive(Debug, Clone, Deserialize)]
pub struct Panels {
    /// Shown above the panels.
    pub title: String,
    /// The x axis' label, with its unit (shared by the panels).
    pub x_label: String,
    /// Three to a row.
    pub panels: Vec<Panel>,
}

/// One panel of [`Panels`].
#[derive(Debug, Clone, Deserialize)]
pub struct Panel {
    /// Shown above the panel.
    pub title: String,
    /// The y axis' label, with its unit.
    pub y_label: String,
    /// One line per series.
    pub lines: Vec<Line>,
}

/// One line of a [`Panel`]: (x, y) points.
#[derive(Debug, Clone, Deserialize)]
pub struct Line {
    /// The legend's name.
    pub name: String,
    /// (x, y), in x order.
    pub points: Vec<(f64, f64)>,
}

/// A chart the `plot` binary reads as JSON.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Chart {
    /// `"kind": "bars"`.
    Bars(Bars),
    /// `"kind": "panels"`.
    Panels(Panels),
}

impl Chart {
    /// The chart as an SVG document.
    pub fn svg(&self) -> anyhow::Result<String> {
        match self {
            Chart::Bars(b) => b.svg(),
            Chart::Panels(p) => p.svg(),
        }
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e:?}")
}

impl Bars {
    /// The chart as an SVG document.
    pub fn svg(&self) -> anyhow::Result<String> {
        font()?;
        let groups = self.groups.len();
        if groups == 0 || self.series.is_empty() {
            bail!("chart {:?}: nothing to draw", self.title);
        }
        if let Some(s) = self.series.iter().find(|s| s.values.len() != groups) {
            bail!(
                "chart {:?}: series {:?} has {} values for {groups} groups",
                self.title,
                s.name,
                s.values.len()
            );
        }
        let values: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied())
            .filter(|v| v.is_finite() && (!self.log || *v > 0.0))
            .collect();
        if values.is_empty() {
            bail!("chart {:?}: no finite values", self.title);
        }
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let row_px = (12 * self.series.len() + 8).max(22) as u32;
        let height = 90 + row_px * groups as u32 + 20 * self.series.len().div_ceil(4) as u32;
        let label_px = self.groups.iter().map(|g| g.chars().count()).max().unwrap_or(0) as u32 * 7 + 16;
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (900, height)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            let legend_px = 20 * self.series.len().div_ceil(4) as u32;
            let (top, legend) = root.split_vertically(height - legend_px - 4);
            if self.log {
                let (lo, hi) = (lo.min(1.0) / 1.3, hi.max(1.0) * 1.3);
                self.draw_on(&top, (lo..hi).log_scale(), 1.0, lo, label_px)?;
            } else {
                let lo = lo.min(0.0);
                self.draw_on(&top, lo..hi.max(0.0) * 1.1, 0.0, lo, label_px)?;
            }
            draw_legend(&legend, self.series.iter().map(|s| s.name.as_str()))?;
            root.present().map_err(plot_err)?;
        }
        Ok(out)
    }

    /// The chart on `top` with value axis `x` (linear or logarithmic),
    /// bars from `base`, group names left of `x_lo`.
    fn draw_on<'a, X>(
        &self,
        top: &DrawingArea<SVGBackend<'a>, Shift>,
        x: X,
        base: f64,
        x_lo: f64,
        label_px: u32,
    ) -> anyhow::Result<()>
    where
        X: AsRangedCoord<Value = f64>,
        X::CoordDescType: Ranged<ValueType = f64> + ValueFormatter<f64>,
    {
        let groups = self.groups.len();
        let mut chart = ChartBuilder::on(top)
            .caption(&self.title, (FAMILY, 17))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(label_px)
            .build_cartesian_2d(x, 0f64..groups as f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(0)
            .x_desc(&self.value_label)
            .x_label_formatter(&|v| format_tick(*v))
            .label_style((FAMILY, 12))
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(plot_err)?;
        self.draw_bars(&mut chart, base)?;
        self.draw_reference(&mut chart, groups)?;
        self.draw_group_labels(&chart, top, x_lo)
    }

    fn draw_bars<'a, X>(
        &self,
        chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
        base: f64,
    ) -> anyhow::Result<()>
    where
        X: Ranged<ValueType = f64>,
    {
        let n = self.series.len() as f64;
        for (k, s) in self.series.iter().enumerate() {
            let color = color_of(&s.name, k);
            let bars = s.values.iter().enumerate().filter_map(|(g, v)| {
                let v = (*v)?;
                // Group g is drawn top-down: row 0 at the top of the y range.
                let row = (self.groups.len() - 1 - g) as f64;
                let y0 = row + 0.1 + 0.8 * (n - 1.0 - k as f64) / n;
                let y1 = y0 + 0.8 / n;
                Some(Rectangle::new([(base, y0), (v, y1)], color.filled()))
            });
            chart.draw_series(bars).map_err(plot_err)?;
        }
        Ok(())
    }

    fn draw_reference<'a, X>(
        &self,
        chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
        groups: usize,
    ) -> anyhow::Result<()>
    where
        X: Ranged<ValueType = f64>,
    {
        if let Some(r) = self.reference {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(r, 0.0), (r, groups as f64)],
                    BLACK.stroke_width(1),
                )))
                .map_err(plot_err)?;
        }
        Ok(())
    }

    fn draw_group_labels<'a, X>(
        &self,
        chart: &ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, plotters::coord::types::RangedCoordf64>>,
        area: &DrawingArea<SVGBackend<'a>, Shift>,
        x_lo: f64,
    ) -> anyhow::Result<()>
    where
        X: Ranged<ValueType = f64>,
    {
        let style = TextStyle::from((FAMILY, 12).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
        let (ox, oy) = area.get_base_pixel();
        for (g, name) in self.groups.iter().enumerate() {
            let row = (self.groups.len() - 1 - g) as f64 + 0.5;
            let (px, py) = chart.backend_coord(&(x_lo, row));
            area.draw_text(name, &style, (px - ox - 6, py - oy))
                .map_err(plot_err)?;
        }
        Ok(())
    }
}

impl Panels {
    /// The chart as an SVG document.
    pub fn svg(&self) -> anyhow::Result<String> {
        font()?;
        if self.panels.is_empty() {
            bail!("chart {:?}: no panels", self.title);
        }
        let cols = self.panels.len().min(3);
        let rows = self.panels.len().div_ceil(cols);
        let names: Vec<&str> = {
            let mut names: Vec<&str> = Vec::new();
            for l in self.panels.iter().flat_map(|p| &p.lines) {
                if !names.contains(&l.name.as_str()) {
                    names.push(&l.name);
                }
            }
            names
        };
        let legend_px = 20 * names.len().div_ceil(4) as u32;
        let height = 50 + 260 * rows as u32 + legend_px;
        let mut out = String::new();
        {
            let root =
                SVGBackend::with_string(&mut out, (300 * cols as u32 + 20, height)).into_drawing_area();
            root.fill(&WHITE).map_err(plot_err)?;
            let root = root.titled(&self.title, (FAMILY, 17)).map_err(plot_err)?;
            let (grid, legend) = root.split_vertically(260 * rows as u32);
            for (panel, area) in self.panels.iter().zip(grid.split_evenly((rows, cols))) {
                let points = panel.lines.iter().flat_map(|l| &l.points);
                let (mut x_lo, mut x_hi, mut y_hi) = (f64::INFINITY, f64::NEG_INFINITY, 0f64);
                for &(x, y) in points {
                    x_lo = x_lo.min(x);
                    x_hi = x_hi.max(x);
                    y_hi = y_hi.max(y);
                }
                if !x_lo.is_finite() {
                    continue;
                }
                if x_hi <= x_lo {
                    (x_lo, x_hi) = (x_lo - 0.5, x_hi + 0.5);
                }
                let pad = (x_hi - x_lo) * 0.08;
                let mut chart = ChartBuilder::on(&area)
                    .caption(&panel.title, (FAMILY, 13))
                    .margin(8)
                    .x_label_area_size(30)
                    .y_label_area_size(52)
                    .build_cartesian_2d((x_lo - pad)..(x_hi + pad), 0f64..(y_hi * 1.15).max(1e-9))
                    .map_err(plot_err)?;
                chart
                    .configure_mesh()
                    .x_labels(((x_hi - x_lo).round() as usize + 1).clamp(2, 8))
                    .x_desc(&self.x_label)
                    .y_desc(&panel.y_label)
                    .x_label_formatter(&|v| format_tick(*v))
                    .y_label_formatter(&|v| format_tick(*v))
                    .label_style((FAMILY, 10))
                    .light_line_style(TRANSPARENT)
                    .axis_desc_style((FAMILY, 11))
                    .draw()
                    .map_err(plot_err)?;
                for line in &panel.lines {
                    let k = names.iter().position(|n| *n == line.name).unwrap_or(0);
                    let color = color_of(&line.name, k);
                    chart
                        .draw_series(LineSeries::new(
                            line.points.iter().copied(),
                            color.stroke_width(2),
                        ))
                        .map_err(plot_err)?;
                    chart
                        .draw_series(line.points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                        .map_err(plot_err)?;
                }
            }
            draw_legend(&legend, names.into_iter())?;
            root.present().map_err(plot_err)?;
        }
        Ok(out)
    }
}

/// Color swatches and names in rows of four.
fn draw_legend<'a, 'n>(
    area: &DrawingArea<SVGBackend<'a>, Shift>,
    names: impl Iterator<Item = &'n str>,
) -> anyhow::Result<()> {
    let style = TextStyle::from((FAMILY, 12).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for (k, name) in names.enumerate() {
        let (x, y) = (20 + 210 * (k % 4) as i32, 10 + 20 * (k / 4) as i32);
        area.draw(&Rectangle::new(
            [(x, y - 5), (x + 12, y + 5)],
            color_of(name, k).filled(),
        ))
        .map_err(plot_err)?;
        area.draw_text(name, &style, (x + 18, y)).map_err(plot_err)?;
    }
    Ok(())
}

/// Axis ticks: three significant digits, thousands as k and M.
pub fn format_tick(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Writes `svg` to `path`, creating its directory.
pub fn write(path: &std::path::Path, svg: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bars(log: bool) -> Bars {
        Bars {
            title: "speed relative to stock".into(),
            value_label: "× stock".into(),
            groups: vec!["stat_cached 1t".into(), "create_unlink 2t".into()],
            series: vec![
                Series {
                    name: "xfuse-dev".into(),
                    values: vec![Some(1.5), Some(0.8)],
                },
                Series {
                    name: "xfuse-uring".into(),
                    values: vec![Some(2.5), None],
                },
            ],
            log,
            reference: Some(1.0),
        }
    }

    #[test]
    fn bars_draw_every_value_and_label() {
        for log in [false, true] {
            let svg = bars(log).svg().unwrap();
            assert!(svg.starts_with("<svg"), "{svg}");
            // Three bars (one value is missing), one legend swatch per series.
            let filled = |c: RGBColor| format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            let count = |c: RGBColor| svg.matches(&filled(c)).count();
            assert_eq!(count(color_of("xfuse-dev", 0)), 2 + 1, "{svg}");
            assert_eq!(count(color_of("xfuse-uring", 1)), 1 + 1, "{svg}");
            for text in [
                "stat_cached 1t",
                "create_unlink 2t",
                "xfuse-dev",
                "speed relative to stock",
            ] {
                assert!(svg.contains(text), "{text} missing: {svg}");
            }
        }
    }

    #[test]
    fn bars_refuse_mismatched_series() {
        let mut b = bars(false);
        b.series[0].values.pop();
        assert!(b
            .svg()
            .unwrap_err()
            .to_string()
            .contains("has 1 values for 2 groups"));
        b.series.clear();
        assert!(b.svg().is_err());
    }

    #[test]
    fn panels_from_json() {
        let chart: Chart = serde_json::from_str(
            r#"{"kind":"panels","title":"ops/s against threads","x_label":"threads",
                "panels":[{"title":"create_unlink","y_label":"ops/s",
                  "lines":[{"name":"stock","points":[[1,1000],[2,1500]]},
                           {"name":"xfuse-uring","points":[[1,3000],[2,5200]]}]}]}"#,
        )
        .unwrap();
        let svg = chart.svg().unwrap();
        // One line per series, in its color (the mesh is drawn with polylines too).
        for (name, k) in [("stock", 0), ("xfuse-uring", 1)] {
            let c = color_of(name, k);
            let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            let lines = svg
                .lines()
                .filter(|l| l.starts_with("<polyline") && l.contains(&stroke));
            assert_eq!(lines.count(), 1, "{name}: {svg}");
        }
        assert!(svg.contains("create_unlink") && svg.contains("threads"), "{svg}");
    }

    #[test]
    fn ticks() {
        assert_eq!(format_tick(1.0), "1");
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(12_500.0), "12.5k");
        assert_eq!(format_tick(3_000_000.0), "3M");
        assert_eq!(format_tick(150.0), "150");
    }
}

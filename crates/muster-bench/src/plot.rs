//! SVG line charts of figures against group size.

use plotters::prelude::*;
use std::path::Path;

/// One line: its name and (x, y) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Draws `series` into an SVG at `path`; `log` puts both axes on a log scale.
pub fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log: bool,
) -> Result<(), String> {
    let fail = |e: &dyn std::fmt::Display| format!("plot {}: {e}", path.display());
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut x_max, mut y_max) = (1.0f64, 1.0f64);
    let (mut x_min, mut y_min) = (f64::MAX, f64::MAX);
    for &(x, y) in points {
        x_max = x_max.max(x);
        y_max = y_max.max(y);
        x_min = x_min.min(x);
        y_min = y_min.min(y);
    }
    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70);
    let colours = [&BLUE, &RED, &GREEN, &MAGENTA, &BLACK, &CYAN];
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc(x_label)
                .y_desc(y_label)
                .draw()
                .map_err(|e| fail(&e))?;
            for (i, s) in series.iter().enumerate() {
                let colour = colours[i % colours.len()];
                chart
                    .draw_series(LineSeries::new(s.points.iter().copied(), colour))
                    .map_err(|e| fail(&e))?
                    .label(s.name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
                chart
                    .draw_series(s.points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
                    .map_err(|e| fail(&e))?;
            }
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| fail(&e))?;
        }};
    }
    if log {
        let x_min = x_min.clamp(1e-3, x_max);
        let y_min = y_min.clamp(1e-3, y_max);
        draw!(builder
            .build_cartesian_2d(
                (x_min * 0.8..x_max * 1.25).log_scale(),
                (y_min * 0.5..y_max * 2.0).log_scale()
            )
            .map_err(|e| fail(&e))?);
    } else {
        draw!(builder
            .build_cartesian_2d(0.0..x_max * 1.05, 0.0..y_max * 1.15)
            .map_err(|e| fail(&e))?);
    }
    root.present().map_err(|e| fail(&e))?;
    Ok(())
}

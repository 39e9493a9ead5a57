//! Turns a results directory of `bench/run.sh` (JSON lines from the tools) into
//! `report.md` (tables with ratios) and `turn.svg` (relayed packets/s and loss
//! against offered load, per server).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::Value;

#[derive(Parser)]
#[command(about = "Report and plot from a bench/run.sh results directory")]
struct Args {
    /// The directory with turn-*.jsonl and sig-*.jsonl files.
    dir: PathBuf,
    /// Fail unless every scenario produced results and the low smoke rates went through
    /// (TURN loss under 5 %, every negotiation done, 90 % of sustained messages back).
    #[arg(long)]
    check: bool,
}

/// Loss below this counts as "without loss" for the maximum rate.
const LOSS_LIMIT: f64 = 0.001;

fn main() -> Result<()> {
    let args = Args::parse();
    let mut lines: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut names: Vec<_> = std::fs::read_dir(&args.dir)
        .with_context(|| args.dir.display().to_string())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    names.sort();
    for path in names {
        let scenario = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("")
            .to_string();
        let text = std::fs::read_to_string(&path)?;
        let values = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect();
        lines.insert(scenario, values);
    }
    let mut md = String::new();
    let mut plots = Vec::new();
    let mut cpu_plots = Vec::new();
    for (scenario, values) in &lines {
        if scenario.starts_with("turn-setup") {
            setup_table(&mut md, scenario, values);
        } else if scenario.starts_with("turn-fixed") {
            fixed_table(&mut md, scenario, values);
            cpu_plots.push((scenario.clone(), values.clone()));
        } else if scenario.starts_with("turn-") {
            sweep_table(&mut md, scenario, values);
            plots.push((scenario.clone(), values.clone()));
        } else if scenario.starts_with("sig-") {
            signaling_table(&mut md, scenario, values);
        }
    }
    if args.check {
        check(&lines)?;
    }
    std::fs::write(args.dir.join("report.md"), &md)?;
    std::fs::write(args.dir.join("turn.svg"), svg(&plots))?;
    if !cpu_plots.is_empty() {
        std::fs::write(args.dir.join("turn-cpu.svg"), cpu_svg(&cpu_plots))?;
    }
    print!("{md}");
    Ok(())
}

fn check(lines: &BTreeMap<String, Vec<Value>>) -> Result<()> {
    let want = [
        "turn-relay",
        "turn-echo",
        "turn-setup",
        "sig-plain-ws",
        "sig-wss",
        "sig-socketio",
        "sig-wss-max",
    ];
    for w in want {
        anyhow::ensure!(
            lines.get(w).is_some_and(|v| !v.is_empty()),
            "no results for {w}"
        );
    }
    anyhow::ensure!(
        lines.keys().any(|k| k.starts_with("turn-fixed-")),
        "no results for the fixed-rate scenarios (turn-fixed-*)"
    );
    for (scenario, values) in lines {
        for v in values {
            let what = format!("{scenario} {}: {v}", label(v));
            match v["phase"].as_str() {
                Some("step") => anyhow::ensure!(f(v, "loss") < 0.05, "loss: {what}"),
                Some("setup") => anyhow::ensure!(f(v, "allocations_per_s") > 0.0, "{what}"),
                Some("negotiate") if v["dialect"] != "echo" => anyhow::ensure!(
                    v["latency"]["p50_us"].as_u64().unwrap_or(0) > 0,
                    "negotiations: {what}"
                ),
                Some("sustain") => anyhow::ensure!(
                    f(v, "received") >= 0.9 * f(v, "sent") && f(v, "sent") > 0.0,
                    "sustained messages: {what}"
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(f64::NAN)
}

fn label(v: &Value) -> String {
    v["label"].as_str().unwrap_or("?").to_string()
}

/// Per label: the steps of a rate sweep, in offered order.
fn steps(values: &[Value]) -> BTreeMap<String, Vec<&Value>> {
    let mut by: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for v in values.iter().filter(|v| v["phase"] == "step") {
        by.entry(label(v)).or_default().push(v);
    }
    by
}

/// The sweeps in `steps`: a new one starts whenever the offered rate does not grow
/// (run.sh runs one sweep per repeat).
fn sweeps<'a>(steps: &[&'a Value]) -> Vec<Vec<&'a Value>> {
    let mut out: Vec<Vec<&Value>> = Vec::new();
    let mut last = f64::INFINITY;
    for s in steps {
        let offered = f(s, "offered_pps");
        if offered <= last || out.is_empty() {
            out.push(Vec::new());
        }
        last = offered;
        out.last_mut().expect("a sweep").push(s);
    }
    out
}

/// The median of the sweeps' maxima (the lower middle for an even count), and all of them.
fn median_max(steps: &[&Value]) -> (Option<f64>, Vec<f64>) {
    let mut all: Vec<f64> = sweeps(steps)
        .iter()
        .filter_map(|s| max_lossless(s))
        .collect();
    all.sort_by(f64::total_cmp);
    let median = (!all.is_empty()).then(|| all[(all.len() - 1) / 2]);
    (median, all)
}

/// The highest relayed rate of a step with loss under the limit, in one sweep.
fn max_lossless(sweep: &[&Value]) -> Option<f64> {
    sweep
        .iter()
        .filter(|s| f(s, "loss") < LOSS_LIMIT && f(s, "offered_pps") > 0.0)
        .map(|s| f(s, "relayed_pps"))
        .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))))
}

fn sweep_table(md: &mut String, scenario: &str, values: &[Value]) {
    let by = steps(values);
    let _ = writeln!(md, "\n### {scenario}\n");
    let _ = writeln!(
        md,
        "| server | offered pkt/s | relayed pkt/s | loss | p50 µs | p99 µs | p999 µs | server core µs/pkt | other CPU s |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for (l, ss) in &by {
        for s in ss {
            let _ = writeln!(
                md,
                "| {l} | {} | {:.0} | {:.3} % | {} | {} | {} | {} | {} |",
                if f(s, "offered_pps") == 0.0 {
                    "max".to_string()
                } else {
                    format!("{:.0}", f(s, "offered_pps"))
                },
                f(s, "relayed_pps"),
                f(s, "loss") * 100.0,
                s["p50_us"],
                s["p99_us"],
                s["p999_us"],
                s["server_core_us_per_packet"],
                s["other_cpu_s"],
            );
        }
    }
    let maxes: Vec<(String, Option<f64>)> = by
        .iter()
        .map(|(l, ss)| (l.clone(), median_max(ss).0))
        .collect();
    let _ = writeln!(md);
    for (l, ss) in &by {
        let (m, all) = median_max(ss);
        let _ = writeln!(
            md,
            "- {l}: highest relayed rate with < {} % loss: {} (median of {} sweeps: {all:?})",
            LOSS_LIMIT * 100.0,
            m.map_or("none".into(), |m| format!("{m:.0} pkt/s")),
            all.len(),
        );
    }
    if let (Some((_, Some(a))), Some((_, Some(b)))) = (
        maxes.iter().find(|(l, _)| l == "switchboard"),
        maxes.iter().find(|(l, _)| l == "coturn"),
    ) {
        let _ = writeln!(md, "- ratio switchboard / coturn: **{:.2}×**", a / b);
    }
}

fn setup_table(md: &mut String, scenario: &str, values: &[Value]) {
    let _ = writeln!(md, "\n### {scenario}\n");
    let _ = writeln!(
        md,
        "| server | allocations | allocations/s | RSS before KiB | RSS after KiB | KiB per allocation |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for v in values.iter().filter(|v| v["phase"] == "setup") {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            label(v),
            v["allocations"],
            v["allocations_per_s"],
            v["server_rss_before_kb"],
            v["server_rss_after_kb"],
            v["server_rss_per_allocation_kb"],
        );
    }
}

fn signaling_table(md: &mut String, scenario: &str, values: &[Value]) {
    let _ = writeln!(md, "\n### {scenario}\n");
    let _ = writeln!(
        md,
        "| server | dialect | tls | pairs | connect p99 ms | negotiation p50 / p99 / max ms | offered msg/s | relayed msg/s | relay p50 / p99 / max µs | server core µs/msg | server process µs/msg (kernel part) | RSS KiB per connection |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut rows: BTreeMap<String, [Option<&Value>; 3]> = BTreeMap::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for v in values {
        let base = format!("{}|{}|{}", label(v), v["dialect"], v["tls"]);
        // Repeats of one server get a row each (a connect line starts a repeat).
        if v["phase"] == "connect" {
            *seen.entry(base.clone()).or_default() += 1;
        }
        let key = format!("{base}|{}", seen.get(&base).copied().unwrap_or(1));
        let slot = match v["phase"].as_str() {
            Some("connect") => 0,
            Some("negotiate") => 1,
            Some("sustain") => 2,
            _ => continue,
        };
        rows.entry(key).or_default()[slot] = Some(v);
    }
    let ms = |v: &Value| {
        v.as_f64()
            .map_or("-".into(), |x| format!("{:.1}", x / 1000.0))
    };
    for (key, [c, n, s]) in rows {
        let mut parts = key.split('|');
        let (l, d, t, r) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let l = format!("{l} (run {r})");
        let null = Value::Null;
        let (c, n, s) = (c.unwrap_or(&null), n.unwrap_or(&null), s.unwrap_or(&null));
        let _ = writeln!(
            md,
            "| {l} | {} | {t} | {} | {} | {} / {} / {} | {} | {} | {} / {} / {} | {} | {} ({}) | {} |",
            d.trim_matches('"'),
            n["pairs"],
            ms(&c["connect"]["p99_us"]),
            ms(&n["latency"]["p50_us"]),
            ms(&n["latency"]["p99_us"]),
            ms(&n["latency"]["max_us"]),
            s["offered_msgs_per_s"],
            s["relayed_msgs_per_s"],
            s["latency"]["p50_us"],
            s["latency"]["p99_us"],
            s["latency"]["max_us"],
            s["server_core_us_per_msg"],
            s["server_cpu_us_per_msg"],
            s["server_system_us_per_msg"],
            n["server_rss_per_connection_kb"],
        );
    }
}

/// Per label and offered rate (packets/s), the server core's µs per relayed packet of
/// every run at that rate, in run order.
fn cpu_by_rate(values: &[Value]) -> BTreeMap<String, BTreeMap<u64, Vec<f64>>> {
    let mut by: BTreeMap<String, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for (l, ss) in steps(values) {
        for s in ss {
            let cpu = f(s, "server_core_us_per_packet");
            if f(s, "offered_pps") > 0.0 && cpu.is_finite() {
                by.entry(l.clone())
                    .or_default()
                    .entry(f(s, "offered_pps") as u64)
                    .or_default()
                    .push(cpu);
            }
        }
    }
    by
}

/// The median (the lower middle for an even count).
fn median(xs: &[f64]) -> Option<f64> {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    (!xs.is_empty()).then(|| xs[(xs.len() - 1) / 2])
}

/// A fixed-rate scenario: per offered rate, each server's core µs per relayed packet
/// (median of the runs, and every run) and the ratio of the medians.
fn fixed_table(md: &mut String, scenario: &str, values: &[Value]) {
    let by = cpu_by_rate(values);
    let _ = writeln!(md, "\n### {scenario}: server core µs per relayed packet\n");
    let _ = writeln!(
        md,
        "| offered pkt/s | switchboard (runs) | coturn (runs) | switchboard / coturn |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    let rates: std::collections::BTreeSet<u64> =
        by.values().flat_map(|r| r.keys().copied()).collect();
    let cell = |l: &str, rate: u64| {
        let runs = by
            .get(l)
            .and_then(|r| r.get(&rate))
            .cloned()
            .unwrap_or_default();
        let m = median(&runs);
        let text = match m {
            Some(m) => format!(
                "{m:.2} ({})",
                runs.iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "-".into(),
        };
        (m, text)
    };
    for rate in rates {
        let (a, a_text) = cell("switchboard", rate);
        let (b, b_text) = cell("coturn", rate);
        // A run too short for the clock's ticks (10 ms) can show no CPU at all.
        let ratio = a
            .zip(b)
            .filter(|&(_, b)| b > 0.0)
            .map_or("-".into(), |(a, b)| format!("**{:.2}×**", a / b));
        let _ = writeln!(md, "| {rate} | {a_text} | {b_text} | {ratio} |");
    }
}

/// The frame of one plot panel: its corners in SVG coordinates and the largest values on
/// its axes. x is offered packets/s, ticked in thousands.
struct Panel {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
    xmax: f64,
    ymax: f64,
}

const PANEL_W: f64 = 640.0;
const PANEL_M: f64 = 60.0;

impl Panel {
    fn new(top: f64, h: f64, xmax: f64, ymax: f64) -> Panel {
        Panel {
            x0: PANEL_M,
            x1: PANEL_W - PANEL_M,
            y0: top + h - 40.0,
            y1: top + 30.0,
            xmax,
            ymax,
        }
    }

    fn px(&self, x: f64) -> f64 {
        self.x0 + (self.x1 - self.x0) * x / self.xmax
    }

    fn py(&self, y: f64) -> f64 {
        self.y0 - (self.y0 - self.y1) * y / self.ymax
    }

    /// The title, the axes (and a right one when `right`), and x ticks with `y_tick(i)`
    /// (0-4) written beside each.
    fn frame(&self, out: &mut String, title: &str, right: bool, y_tick: impl Fn(usize) -> String) {
        let (x0, x1, y0, y1) = (self.x0, self.x1, self.y0, self.y1);
        let _ = writeln!(
            out,
            "<text x='{x0}' y='{}' font-size='13'>{title}</text>",
            y1 - 12.0
        );
        let _ = writeln!(
            out,
            "<line x1='{x0}' y1='{y0}' x2='{x1}' y2='{y0}' stroke='black'/><line x1='{x0}' y1='{y0}' x2='{x0}' y2='{y1}' stroke='black'/>"
        );
        if right {
            let _ = writeln!(
                out,
                "<line x1='{x1}' y1='{y0}' x2='{x1}' y2='{y1}' stroke='gray'/>"
            );
        }
        for i in 0..=4 {
            let fx = self.xmax * i as f64 / 4.0;
            let _ = writeln!(
                out,
                "<text x='{:.1}' y='{:.1}' text-anchor='middle'>{:.0}k</text>{}",
                self.px(fx),
                y0 + 14.0,
                fx / 1000.0,
                y_tick(i)
            );
        }
    }

    /// The `k`th line of the legend.
    fn legend(&self, out: &mut String, k: usize, color: &str, label: &str) {
        let _ = writeln!(
            out,
            "<text x='{:.1}' y='{:.1}' fill='{color}'>{label}</text>",
            self.x0 + 10.0,
            self.y1 + 14.0 * (k as f64 + 1.0)
        );
    }
}

/// A white SVG canvas for `panels` panels of height `h`.
fn svg_canvas(panels: usize, h: f64) -> String {
    let total_h = h * panels.max(1) as f64;
    format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{PANEL_W}' height='{total_h}' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n"
    )
}

/// The same server keeps its colour in every panel and plot.
fn server_color(label: &str, k: usize) -> &'static str {
    const OTHERS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
    match label {
        "switchboard" => "#d62728",
        "coturn" => "#1f77b4",
        "forwarder" => "#7f7f7f",
        _ => OTHERS[k % OTHERS.len()],
    }
}

/// One panel per fixed-rate scenario: each server's core µs per relayed packet (median of
/// the runs) against offered packets/s, every run as a dot.
fn cpu_svg(plots: &[(String, Vec<Value>)]) -> String {
    const H: f64 = 260.0;
    let mut out = svg_canvas(plots.len(), H);
    for (p, (scenario, values)) in plots.iter().enumerate() {
        let by = cpu_by_rate(values);
        let points = by.values().flat_map(|r| r.iter());
        let xmax = points.clone().map(|(x, _)| *x as f64).fold(1.0, f64::max);
        let ymax = points
            .flat_map(|(_, ys)| ys.iter().copied())
            .fold(1.0, f64::max);
        let panel = Panel::new(p as f64 * H, H, xmax, ymax);
        panel.frame(
            &mut out,
            &format!("{scenario}: server core µs per relayed packet against offered packets/s"),
            false,
            |i| {
                let fy = ymax * i as f64 / 4.0;
                format!(
                    "<text x='{:.1}' y='{:.1}' text-anchor='end'>{fy:.1}</text>",
                    panel.x0 - 4.0,
                    panel.py(fy) + 4.0
                )
            },
        );
        for (k, (l, rates)) in by.iter().enumerate() {
            let color = server_color(l, k);
            let line: Vec<String> = rates
                .iter()
                .filter_map(|(x, ys)| {
                    median(ys).map(|m| format!("{:.1},{:.1}", panel.px(*x as f64), panel.py(m)))
                })
                .collect();
            let _ = writeln!(
                out,
                "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
                line.join(" ")
            );
            for (x, ys) in rates {
                for y in ys {
                    let _ = writeln!(
                        out,
                        "<circle cx='{:.1}' cy='{:.1}' r='2' fill='{color}'/>",
                        panel.px(*x as f64),
                        panel.py(*y)
                    );
                }
            }
            panel.legend(&mut out, k, color, l);
        }
    }
    out.push_str("</svg>\n");
    out
}

/// One panel per TURN sweep: relayed packets/s (solid) and loss % (dashed, right axis).
fn svg(plots: &[(String, Vec<Value>)]) -> String {
    const H: f64 = 300.0;
    let mut out = svg_canvas(plots.len(), H);
    for (p, (scenario, values)) in plots.iter().enumerate() {
        let by = steps(values);
        let all: Vec<&&Value> = by
            .values()
            .flatten()
            .filter(|s| f(s, "offered_pps") > 0.0)
            .collect();
        let xmax = all.iter().map(|s| f(s, "offered_pps")).fold(1.0, f64::max);
        let ymax = all
            .iter()
            .map(|s| f(s, "relayed_pps").max(f(s, "offered_pps")))
            .fold(1.0, f64::max);
        let lmax = all.iter().map(|s| f(s, "loss") * 100.0).fold(1.0, f64::max);
        let panel = Panel::new(p as f64 * H, H, xmax, ymax);
        let pl = |l: f64| panel.y0 - (panel.y0 - panel.y1) * l / lmax;
        panel.frame(
            &mut out,
            &format!("{scenario}: relayed packets/s (solid, left) and loss % (dashed, right) against offered packets/s"),
            true,
            |i| {
                let fy = ymax * i as f64 / 4.0;
                let fl = lmax * i as f64 / 4.0;
                format!(
                    "<text x='{:.1}' y='{:.1}' text-anchor='end'>{:.0}k</text><text x='{:.1}' y='{:.1}'>{fl:.1}%</text>",
                    panel.x0 - 4.0,
                    panel.py(fy) + 4.0,
                    fy / 1000.0,
                    panel.x1 + 4.0,
                    pl(fl) + 4.0
                )
            },
        );
        for (k, (l, ss)) in by.iter().enumerate() {
            let color = server_color(l, k);
            // One line per sweep (repeat), so that repeats do not join up.
            for sweep in sweeps(ss) {
                let pts: Vec<&Value> = sweep
                    .into_iter()
                    .filter(|s| f(s, "offered_pps") > 0.0)
                    .collect();
                let line = |g: &dyn Fn(&Value) -> (f64, f64)| {
                    pts.iter()
                        .map(|s| {
                            let (x, y) = g(s);
                            format!("{x:.1},{y:.1}")
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let _ = writeln!(
                    out,
                    "<polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>",
                    line(&|s| (panel.px(f(s, "offered_pps")), panel.py(f(s, "relayed_pps"))))
                );
                let _ = writeln!(
                    out,
                    "<polyline fill='none' stroke='{color}' stroke-dasharray='4 3' points='{}'/>",
                    line(&|s| (panel.px(f(s, "offered_pps")), pl(f(s, "loss") * 100.0)))
                );
            }
            panel.legend(&mut out, k, color, l);
        }
    }
    out.push_str("</svg>\n");
    out
}

use std::time::Instant;
use stageflow::*;
fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    for &n in &[1000usize, 2000, 100_000, 1_000_000] {
        let t = Instant::now();
        let names: Vec<String> = (0..n).map(|i| format!("stage_{i}")).collect();
        let g = Pipeline::builder("p").with_linear_chain(n, |i| {
            let prev = if i == 0 { None } else { Some(names[i-1].clone()) };
            StageSpec::new(names[i].clone(), move |ctx: StageContext| { let prev = prev.clone(); async move {
                let v: u64 = match &prev { Some(p) => ctx.get_from(p, "value")?, None => 0 };
                Ok::<_, InputError>(StageOutput::ok().with("value", v + 1))
            }})
        }).build().unwrap();
        let build = t.elapsed();
        for _ in 0..3 {
            let t = Instant::now();
            let r = rt.block_on(g.run_with((), RunOptions::new().retention(Retention::Sinks))).unwrap();
            let el = t.elapsed();
            println!("n={n} build={:?} run={:?} per={:.3}us struct={}B/stage last={}", build, el, el.as_secs_f64()*1e6/n as f64, g.structure_bytes()/n, r.results().get_data::<u64>(&names[n-1],"value").unwrap());
        }
    }
    // fan-out
    for &w in &[10_000usize, 100_000] {
        let noop = |_ctx: StageContext| async { StageOutput::ok() };
        let g = Pipeline::builder("w").with_fan_out_fan_in(StageSpec::new("src", noop), w, |i| StageSpec::new(format!("w{i}"), noop), StageSpec::new("sink", noop)).build().unwrap();
        for _ in 0..3 {
            let t = Instant::now();
            rt.block_on(g.run(())).unwrap();
            let el = t.elapsed();
            println!("wide={w} run={:?} per={:.3}us", el, el.as_secs_f64()*1e6/w as f64);
        }
    }
}

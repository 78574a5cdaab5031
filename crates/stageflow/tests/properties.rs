//! Property tests over random DAGs: exactly-once execution in dependency order, inputs limited to
//! declared dependencies, skip propagation, the concurrency cap, topological order, cycle reports,
//! and fail-fast.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{noop, Gauge};
use proptest::prelude::*;
use stageflow::{
    ErrorCode, FailureCause, Graph, InputError, Pipeline, RunOptions, StageContext, StageOutput,
    StageSpec,
};

/// A random acyclic graph: edges only from lower to higher index; defined in a random order.
#[derive(Clone, Debug)]
struct Dag {
    /// `deps[j]`: sorted, distinct, all `< j`.
    deps: Vec<Vec<usize>>,
    /// Definition order: a permutation of `0..n`.
    order: Vec<usize>,
    /// What each stage does before finishing (see [`pause`]) and whether it skips itself.
    behaviour: Vec<u8>,
    cap: Option<usize>,
}

impl Dag {
    fn n(&self) -> usize {
        self.deps.len()
    }

    fn edges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.deps
            .iter()
            .enumerate()
            .flat_map(|(j, ds)| ds.iter().map(move |&d| (d, j)))
    }

    /// Stages that (transitively) depend on `i`.
    fn descendants(&self, i: usize) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        out.insert(i);
        for j in i + 1..self.n() {
            if self.deps[j].iter().any(|d| out.contains(d)) {
                out.insert(j);
            }
        }
        out.remove(&i);
        out
    }
}

fn name(i: usize) -> String {
    format!("n{i}")
}

fn dag_strategy(max_nodes: usize) -> impl Strategy<Value = Dag> {
    (1..=max_nodes)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(prop::collection::vec(any::<usize>(), 0..5), n),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
                prop::collection::vec(any::<u8>(), n),
                prop::option::of(1..6usize),
            )
        })
        .prop_map(|(raw, order, behaviour, cap)| {
            let deps = raw
                .into_iter()
                .enumerate()
                .map(|(j, picks)| {
                    if j == 0 {
                        return Vec::new();
                    }
                    let set: BTreeSet<usize> = picks.into_iter().map(|p| p % j).collect();
                    set.into_iter().collect()
                })
                .collect();
            Dag {
                deps,
                order,
                behaviour,
                cap,
            }
        })
}

/// Builds the pipeline of `dag`, in its definition order, with `make(i)` as stage `i`.
fn pipeline(dag: &Dag, mut make: impl FnMut(usize) -> StageSpec) -> Pipeline {
    let mut p = Pipeline::builder("random");
    for &i in &dag.order {
        // Declare each dependency, some twice, in a scrambled order.
        let mut deps: Vec<String> = dag.deps[i].iter().rev().map(|&d| name(d)).collect();
        if let Some(first) = dag.deps[i].first() {
            if dag.behaviour[i] % 2 == 0 {
                deps.push(name(*first));
            }
        }
        p = p.add(make(i).after(deps));
    }
    p
}

/// A tiny pause chosen by `code`, to force different interleavings.
async fn pause(code: u8) {
    match code % 8 {
        0..=2 => {}
        3 | 4 => tokio::task::yield_now().await,
        5 => {
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
        }
        6 => std::thread::sleep(Duration::from_micros(u64::from(code % 50))),
        _ => tokio::time::sleep(Duration::from_micros(200)).await,
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(common::runtime)
}

/// What each stage saw and when.
struct Recorder {
    clock: AtomicU64,
    runs: Vec<AtomicUsize>,
    start: Vec<AtomicU64>,
    end: Vec<AtomicU64>,
    gauge: Arc<Gauge>,
    violations: Mutex<Vec<String>>,
}

impl Recorder {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Recorder {
            clock: AtomicU64::new(0),
            runs: (0..n).map(|_| AtomicUsize::new(0)).collect(),
            start: (0..n).map(|_| AtomicU64::new(0)).collect(),
            end: (0..n).map(|_| AtomicU64::new(0)).collect(),
            gauge: Arc::new(Gauge::default()),
            violations: Mutex::new(Vec::new()),
        })
    }

    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn violation(&self, v: String) {
        self.violations.lock().unwrap().push(v);
    }
}

/// Stage `i` of a recorded run. It checks its inputs, pauses, and outputs its index; it skips
/// itself when `skip_self`.
fn recorded_stage(dag: &Dag, rec: &Arc<Recorder>, i: usize, skip_self: bool) -> StageSpec {
    let rec = rec.clone();
    let expected: BTreeSet<String> = dag.deps[i].iter().map(|&d| name(d)).collect();
    // A stage that is not a dependency: preferably an earlier one, which may well have finished.
    let outsider = (0..i)
        .rev()
        .chain(i + 1..dag.n())
        .find(|k| !dag.deps[i].contains(k))
        .map(name);
    let code = dag.behaviour[i];
    StageSpec::new(name(i), move |ctx: StageContext| {
        // Entered when the executor starts the stage, left when the stage's future is gone.
        let guard = rec.gauge.enter();
        let rec = rec.clone();
        let expected = expected.clone();
        let outsider = outsider.clone();
        async move {
            let _guard = guard;
            rec.runs[i].fetch_add(1, Ordering::SeqCst);
            rec.start[i].store(rec.tick(), Ordering::SeqCst);
            let seen: BTreeSet<String> = ctx.inputs().map(|(n, _)| n.to_owned()).collect();
            if seen != expected {
                rec.violation(format!("{}: inputs {seen:?} != deps {expected:?}", name(i)));
            }
            let listed: BTreeSet<String> = ctx.dependencies().map(str::to_owned).collect();
            if listed != expected {
                rec.violation(format!("{}: dependencies() {listed:?}", name(i)));
            }
            for (dep, out) in ctx.inputs() {
                let ok_id =
                    out.is_skipped() || out.get::<String>("id").ok().as_deref() == Some(dep);
                if !ok_id {
                    rec.violation(format!("{}: input {dep} carries {out:?}", name(i)));
                }
            }
            for other in outsider.iter().chain(std::iter::once(&name(i))) {
                match ctx.get_from::<String>(other, "id") {
                    Err(InputError::Undeclared {
                        stage, requested, ..
                    }) if stage == name(i) && &requested == other => {}
                    res => rec.violation(format!("{}: get_from({other}) gave {res:?}", name(i))),
                }
                if ctx.output_of(other).is_ok() {
                    rec.violation(format!("{}: output_of({other}) succeeded", name(i)));
                }
            }
            pause(code).await;
            rec.end[i].store(rec.tick(), Ordering::SeqCst);
            if skip_self {
                StageOutput::skip("chose to skip")
            } else {
                StageOutput::ok().with("id", name(i))
            }
        }
    })
}

/// Which stages end skipped, and which of those never run: a stage with dependencies that are
/// all skipped is skipped without running; otherwise it runs and skips if it chooses to.
fn expected_skips(dag: &Dag, skip_self: &[bool]) -> (Vec<bool>, Vec<bool>) {
    let n = dag.n();
    let mut skipped = vec![false; n];
    let mut runs = vec![true; n];
    for j in 0..n {
        let upstream = !dag.deps[j].is_empty() && dag.deps[j].iter().all(|&d| skipped[d]);
        runs[j] = !upstream;
        skipped[j] = upstream || skip_self[j];
    }
    (skipped, runs)
}

fn check_recorded_run(dag: &Dag, skip_self: &[bool]) -> Result<(), TestCaseError> {
    let n = dag.n();
    let rec = Recorder::new(n);
    let graph: Graph = pipeline(dag, |i| recorded_stage(dag, &rec, i, skip_self[i]))
        .build()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let mut opts = RunOptions::new();
    if let Some(cap) = dag.cap {
        opts = opts.max_concurrency(cap);
    }
    let report = runtime()
        .block_on(graph.run_with((), opts))
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert!(report.is_completed());

    let violations = rec.violations.lock().unwrap();
    prop_assert!(violations.is_empty(), "{:#?}", *violations);

    let (skipped, runs) = expected_skips(dag, skip_self);
    for i in 0..n {
        let times = rec.runs[i].load(Ordering::SeqCst);
        prop_assert_eq!(
            times,
            usize::from(runs[i]),
            "stage {} ran {} times",
            name(i),
            times
        );
        let out = report.results().get(&name(i));
        prop_assert!(out.is_some(), "no result for {}", name(i));
        let out = out.unwrap();
        prop_assert_eq!(out.is_skipped(), skipped[i], "{}: {:?}", name(i), out);
        if skipped[i] && !runs[i] {
            prop_assert_eq!(out.message(), Some("all upstream stages skipped"));
        }
    }
    // Every stage that ran started after each of its dependencies that ran had finished.
    for (d, j) in dag.edges() {
        if runs[d] && runs[j] {
            let end_d = rec.end[d].load(Ordering::SeqCst);
            let start_j = rec.start[j].load(Ordering::SeqCst);
            prop_assert!(
                end_d < start_j,
                "{} started at {} before its dependency {} ended at {}",
                name(j),
                start_j,
                name(d),
                end_d
            );
        }
    }
    if let Some(cap) = dag.cap {
        prop_assert!(
            rec.gauge.max() <= cap,
            "{} at once, cap {}",
            rec.gauge.max(),
            cap
        );
    }
    prop_assert_eq!(rec.gauge.current(), 0);
    let stats = report.stats();
    prop_assert_eq!(stats.total, n);
    prop_assert_eq!(stats.started, n);
    prop_assert_eq!(stats.skipped, skipped.iter().filter(|&&s| s).count());
    prop_assert_eq!(stats.succeeded + stats.skipped, n);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]

    /// Every stage runs exactly once, after all its dependencies, seeing exactly its declared
    /// dependencies; the cap holds.
    #[test]
    fn random_dags_run_each_stage_once_in_dependency_order(dag in dag_strategy(60)) {
        let no_skips = vec![false; dag.n()];
        check_recorded_run(&dag, &no_skips)?;
    }

    /// Same, with random stages skipping themselves: skips propagate exactly by the rule.
    #[test]
    fn random_skips_propagate_by_the_rule(
        dag in dag_strategy(40),
        skips in prop::collection::vec(prop::bool::weighted(0.3), 40),
    ) {
        check_recorded_run(&dag, &skips[..dag.n()])?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// The graph's structure matches the definition; the topological order respects every edge.
    #[test]
    fn topological_order_respects_all_edges(dag in dag_strategy(60)) {
        let graph = pipeline(&dag, |i| StageSpec::new(name(i), noop)).build().unwrap();
        let n = dag.n();
        prop_assert_eq!(graph.len(), n);
        let order = graph.topological_order();
        prop_assert_eq!(order.len(), n);
        let position: HashMap<&str, usize> =
            order.iter().enumerate().map(|(p, s)| (*s, p)).collect();
        prop_assert_eq!(position.len(), n, "topological order repeats a stage");
        for (d, j) in dag.edges() {
            prop_assert!(position[name(d).as_str()] < position[name(j).as_str()]);
        }
        // Definition order is preserved, dependencies are deduplicated.
        let defined: Vec<String> = dag.order.iter().map(|&i| name(i)).collect();
        prop_assert_eq!(graph.stage_names().collect::<Vec<_>>(), defined);
        for i in 0..n {
            let deps: BTreeSet<&str> = graph.dependencies_of(&name(i)).unwrap().into_iter().collect();
            let expected: Vec<String> = dag.deps[i].iter().map(|&d| name(d)).collect();
            prop_assert_eq!(deps, expected.iter().map(String::as_str).collect::<BTreeSet<_>>());
            prop_assert_eq!(graph.dependencies_of(&name(i)).unwrap().len(), dag.deps[i].len());
            let dependents = graph.dependents_of(&name(i)).unwrap();
            let expected_dependents = (0..n).filter(|&j| dag.deps[j].contains(&i)).count();
            prop_assert_eq!(dependents.len(), expected_dependents);
        }
        let roots = graph.roots().count();
        prop_assert_eq!(roots, dag.deps.iter().filter(|d| d.is_empty()).count());
    }

    /// A back edge makes a cycle, reported as a real path of dependency edges.
    #[test]
    fn back_edge_is_reported_as_a_real_cycle(
        dag in dag_strategy(60),
        top_pick in any::<usize>(),
        walk in prop::collection::vec(any::<usize>(), 60),
    ) {
        let mut dag = dag;
        let n = dag.n();
        prop_assume!(n >= 2);
        // Pick a stage with a dependency (adding one if needed), walk down dependencies to a
        // root, then make that root depend on the stage: a cycle through the walked path.
        let top = 1 + top_pick % (n - 1);
        if dag.deps[top].is_empty() {
            dag.deps[top].push(top - 1);
        }
        let mut bottom = top;
        let mut step = 0;
        while !dag.deps[bottom].is_empty() {
            let ds = &dag.deps[bottom];
            bottom = ds[walk[step % walk.len()] % ds.len()];
            step += 1;
        }
        dag.deps[bottom].push(top); // breaks "lower to higher": the back edge
        let deps_of: Vec<BTreeSet<String>> =
            dag.deps.iter().map(|ds| ds.iter().map(|&d| name(d)).collect()).collect();

        let err = pipeline(&dag, |i| StageSpec::new(name(i), noop)).build().unwrap_err();
        prop_assert_eq!(err.errors.len(), 1, "{}", err);
        let e = err.first();
        prop_assert_eq!(e.code, ErrorCode::Cycle);
        let cycle = &e.cycle;
        prop_assert!(cycle.len() >= 3, "{:?}", cycle);
        prop_assert_eq!(cycle.first(), cycle.last());
        let distinct: BTreeSet<&String> = cycle[..cycle.len() - 1].iter().collect();
        prop_assert_eq!(distinct.len(), cycle.len() - 1, "cycle repeats a stage: {:?}", cycle);
        let index = |s: &str| s[1..].parse::<usize>().unwrap();
        for pair in cycle.windows(2) {
            // "a -> b": b depends on a.
            prop_assert!(
                deps_of[index(&pair[1])].contains(&pair[0]),
                "{} -> {} is not an edge ({:?})", pair[0], pair[1], cycle
            );
        }
        prop_assert!(e.message.contains(&cycle.join(" -> ")), "{}", e.message);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// A failing stage stops the run: it is the reported stage, nothing downstream of it starts,
    /// and partial results hold only stages that finished.
    #[test]
    fn failure_stops_everything_downstream(dag in dag_strategy(40), pick in any::<usize>()) {
        let n = dag.n();
        let failing = pick % n;
        let rec = Recorder::new(n);
        let graph = pipeline(&dag, |i| {
            if i == failing {
                let rec = rec.clone();
                StageSpec::new(name(i), move |_ctx: StageContext| {
                    rec.runs[i].fetch_add(1, Ordering::SeqCst);
                    async move { StageOutput::fail(format!("{} failed on purpose", name(i))) }
                })
            } else {
                recorded_stage(&dag, &rec, i, false)
            }
        })
        .build()
        .unwrap();
        let mut opts = RunOptions::new();
        if let Some(cap) = dag.cap {
            opts = opts.max_concurrency(cap);
        }
        let failure = runtime().block_on(graph.run_with((), opts)).unwrap_err();
        prop_assert_eq!(failure.stage(), name(failing));
        prop_assert_eq!(
            failure.cause(),
            &FailureCause::Error { message: format!("{} failed on purpose", name(failing)), retryable: false }
        );
        for d in dag.descendants(failing) {
            prop_assert_eq!(rec.runs[d].load(Ordering::SeqCst), 0, "{} ran", name(d));
        }
        for (stage, out) in failure.partial_results().iter() {
            let i: usize = stage[1..].parse().unwrap();
            prop_assert!(i != failing);
            prop_assert!(out.is_ok());
            prop_assert!(rec.end[i].load(Ordering::SeqCst) > 0, "{} has a result but did not finish", stage);
        }
        // Every stage is run at most once, and none is left running.
        for i in 0..n {
            prop_assert!(rec.runs[i].load(Ordering::SeqCst) <= 1);
        }
        prop_assert_eq!(rec.gauge.current(), 0);
        let violations = rec.violations.lock().unwrap();
        prop_assert!(violations.is_empty(), "{:#?}", *violations);
    }
}

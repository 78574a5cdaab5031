//! A tour of the library API: a stage type, closure stages, a fan-out/fan-in, a conditional
//! branch, and what a failure looks like.
//!
//! Run it with `cargo run -p stageflow --example quickstart`.

use stageflow::{
    async_trait, Pipeline, RunOptions, Stage, StageContext, StageError, StageKind, StageOutput,
    StageResult, StageSpec,
};

/// A stage with configuration: multiplies the value of its `source` dependency.
struct Scale {
    source: &'static str,
    factor: i64,
}

#[async_trait]
impl Stage for Scale {
    async fn execute(&self, ctx: StageContext) -> StageResult {
        let value: i64 = ctx.get_from(self.source, "value")?;
        Ok(StageOutput::ok().with("value", value * self.factor))
    }

    fn kind(&self) -> StageKind {
        StageKind::Transform
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // 1. Closure stages, a typed stage, and dependencies with `after`.
    let graph = Pipeline::builder("tour")
        .stage("read", |ctx: StageContext| async move {
            let base: i64 = ctx.input()?;
            Ok::<_, StageError>(StageOutput::ok().with("value", base))
        })
        .stage(
            "scale",
            Scale {
                source: "read",
                factor: 10,
            },
        )
        .after("read")
        // 2. Fan out into 4 parallel stages and back in.
        .with_fan_out_fan_in(
            StageSpec::new("split", |ctx: StageContext| async move {
                let v: i64 = ctx.get_from("scale", "value")?;
                Ok::<_, StageError>(StageOutput::ok().with("part", v))
            })
            .after("scale"),
            4,
            |i| {
                StageSpec::new(format!("part_{i}"), move |ctx: StageContext| async move {
                    let v: i64 = ctx.get_from("split", "part")?;
                    Ok::<_, StageError>(StageOutput::ok().with("value", v + i as i64))
                })
            },
            StageSpec::new("sum", |ctx: StageContext| async move {
                let mut total = 0i64;
                for (_, output) in ctx.inputs() {
                    total += output.get::<i64>("value")?;
                }
                Ok::<_, StageError>(StageOutput::ok().with("total", total))
            }),
        )
        // 3. A conditional stage: runs only for big totals.
        .stage("alert", |_ctx: StageContext| async {
            StageOutput::ok().with("sent", true)
        })
        .after("sum")
        .when(|inputs| inputs.get_from::<i64>("sum", "total").map(|t| t > 1000))
        .build()?;

    let report = graph
        .run_with(7, RunOptions::new().max_concurrency(4))
        .await?;
    println!(
        "run {} finished: {:?}",
        report.identity().run_id,
        report.status()
    );
    println!(
        "sum = {}",
        report.results().get_data::<i64>("sum", "total")?
    );
    println!(
        "alert: {}",
        report
            .results()
            .require("alert")?
            .message()
            .unwrap_or("sent")
    );

    // 4. A failure: the caller learns which stage failed and why, with the partial results.
    let failing = Pipeline::builder("failing")
        .with_linear_chain(5, |i| {
            StageSpec::new(format!("step_{i}"), move |_ctx: StageContext| async move {
                if i == 3 {
                    StageOutput::fail("disk full")
                } else {
                    StageOutput::ok()
                }
            })
        })
        .build()?;
    let failure = failing.run(()).await.unwrap_err();
    println!("{failure}");
    println!(
        "finished before the failure: {:?}",
        failure.partial_results().names().collect::<Vec<_>>()
    );
    Ok(())
}

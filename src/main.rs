//! The `switchyard` command: run the gateway, or check a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchyard::config::{Config, LogFormat};
use switchyard::telemetry::logs;

/// An OpenAI-compatible gateway that routes each chat request to a local or a cloud model.
#[derive(Parser)]
#[command(name = "switchyard", version)]
struct Cli {
    /// Configuration file (default: the embedded conf/switchyard.yaml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Reload the configuration file when it changes (SIGHUP always reloads it).
    #[arg(long, global = true)]
    watch: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (the default).
    Run,
    /// Validate the configuration and print every problem with its line and column.
    Check,
    /// Print the routing decision for the chat request on standard input (no upstream is
    /// contacted).
    Route,
    /// Fit the routing scorer on labelled rows and print cross-validated metrics.
    Train(TrainArgs),
    /// Gateway keys: `key new --name NAME` prints a fresh key once, and the YAML with its hash.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Ask a running gateway whether it is alive (for a container's health check: the image
    /// needs no curl). Exit status 0 on a 200, 1 otherwise.
    Healthcheck {
        /// The URL to ask (plain http).
        #[arg(long, default_value = "http://127.0.0.1:8080/health/live")]
        url: String,
    },
    /// Print how the scorer's tokenizer reads texts: JSONL `{"id", "text"}` on standard input,
    /// `{"id", "ids"}` out, for checking it against the reference tokenizer.
    Tokens {
        /// A table made by `tools/distill.py` (default: the built-in one).
        #[arg(long)]
        table: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Make a fresh key.
    New {
        /// The key's name: the tenant in metrics, `/stats` and the access log.
        #[arg(long)]
        name: String,
    },
}

#[derive(clap::Args)]
struct TrainArgs {
    /// JSONL rows: `messages` and `weak_ok` (or `needs_cloud`), optional `id` and `source`; or
    /// the gateway's feedback labels (`feedback.labels`, kept with `store_text`).
    #[arg(long)]
    data: PathBuf,
    /// The scorer in force, to compare the new one with on the same rows (default: the
    /// built-in one).
    #[arg(long)]
    current: Option<PathBuf>,
    /// Where to write the fitted scorer.
    #[arg(long)]
    out: PathBuf,
    /// Cross-validation folds (rows of one conversation stay in one fold).
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Also write the out-of-fold scores as JSONL `{id, score, route}` for an external scorer.
    #[arg(long)]
    predictions: Option<PathBuf>,
    /// The score from which `route` is `cloud` in the predictions file.
    #[arg(long, default_value_t = 0.5)]
    threshold: f64,
    /// Bits of the word n-gram hash (0 turns n-grams off).
    #[arg(long, default_value_t = 0)]
    ngram_bits: u32,
    /// The static embedding table of the semantic part: `builtin`, a file made by
    /// `tools/distill.py` (the scorer file names it relative to its own folder), or `none` for
    /// a scorer of surface features only.
    #[arg(long, default_value = "builtin")]
    table: String,
    /// Leave the surface features out (the embedding alone).
    #[arg(long)]
    no_features: bool,
    /// Keep the surface features at a scorer's weights and fit the rest on top of them:
    /// `surface` (the built-in hand-set weights, `conf/scorer-surface.json`) or a scorer file.
    #[arg(long)]
    prior: Option<PathBuf>,
    /// Fit one intercept for all rows instead of one per source.
    #[arg(long)]
    no_group_intercepts: bool,
    /// L2 penalty on the embedding weights.
    #[arg(long, default_value_t = 0.1)]
    l2_embedding: f64,
    /// Tokens of the last user message the embedding reads, at most.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Gradient descent steps.
    #[arg(long, default_value_t = 3000)]
    iterations: usize,
}

/// Prints a line of a report; a closed standard output (`| head`) must not stop the work.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// The gateway allocates and frees small buffers on every request; mimalloc's per-thread free
/// lists serve them without the system allocator's arena locking and heap trimming.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that read no configuration log as text; the others as it says, once read.
    let configured = matches!(
        cli.command,
        None | Some(Command::Run | Command::Check | Command::Route)
    );
    if !configured {
        logs::init(LogFormat::Text);
    }
    if let Some(Command::Key(KeyCommand::New { name })) = &cli.command {
        return match switchyard::auth::new_key() {
            Ok((key, hash)) => {
                say!("# The key for `{name}` (shown once: give it to them, it is not stored):");
                say!("#   {key}");
                say!("# Add this to the configuration's `keys:` list:");
                say!("keys:");
                say!("  - name: {name}");
                say!("    sha256: {hash}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("switchyard key new: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Command::Healthcheck { url }) = &cli.command {
        return match switchyard::proxy::probe(url, std::time::Duration::from_secs(3)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard healthcheck: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Command::Tokens { table }) = &cli.command {
        return match tokens(table.as_deref()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard tokens: {e}");
                ExitCode::from(1)
            }
        };
    }
    if let Some(Command::Train(args)) = &cli.command {
        return match train(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard train: {e}");
                ExitCode::from(1)
            }
        };
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(errors) => {
            let source = cli
                .config
                .as_ref()
                .map_or("embedded configuration".to_owned(), |p| {
                    p.display().to_string()
                });
            for e in &errors {
                eprintln!("{source}: {e}");
            }
            eprintln!("{} error(s) in {source}", errors.len());
            return ExitCode::from(1);
        }
    };
    logs::init(config.telemetry.log_format);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            println!(
                "configuration OK: {} upstream(s), {} model(s)",
                config.upstreams.len(),
                config.models.len()
            );
            if let Some(routing) = &config.routing {
                println!("scorer: {}", routing.scorer.describe());
            }
            ExitCode::SUCCESS
        }
        Command::Train(_)
        | Command::Key(_)
        | Command::Tokens { .. }
        | Command::Healthcheck { .. } => {
            unreachable!("handled before the configuration is read")
        }
        Command::Route => match dry_run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard route: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run => match switchyard::proxy::run(config, cli.config.clone(), cli.watch) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("switchyard: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn train(args: &TrainArgs) -> Result<(), String> {
    use switchyard::classify::{dataset, scorer};
    let (rows, skipped) = dataset::load_counting(&args.data)?;
    if skipped > 0 {
        say!("{skipped} feedback line(s) left out: no text (kept without store_text), or not about a local answer");
    }
    if rows.is_empty() {
        return Err(format!("{} has no rows", args.data.display()));
    }
    let table = match args.table.as_str() {
        "none" => None,
        "builtin" => Some((
            switchyard::classify::embedding::builtin()?,
            "builtin".to_owned(),
        )),
        path => {
            let table = switchyard::classify::StaticTable::load(std::path::Path::new(path))?;
            let name = std::path::Path::new(path)
                .file_name()
                .map_or_else(|| path.to_owned(), |n| n.to_string_lossy().into_owned());
            Some((std::sync::Arc::new(table), name))
        }
    };
    let prior = match &args.prior {
        None => None,
        Some(path) => {
            let text = if path.as_os_str() == "surface" {
                switchyard::config::SURFACE_SCORER.to_owned()
            } else {
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?
            };
            let prior: scorer::Scorer =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            Some(prior.features)
        }
    };
    let opts = scorer::TrainOptions {
        prior,
        ngram_bits: args.ngram_bits,
        iterations: args.iterations,
        features: !args.no_features,
        table,
        max_tokens: args.max_tokens,
        group_intercepts: !args.no_group_intercepts,
        l2_embedding: args.l2_embedding,
        ..Default::default()
    };
    if args.folds >= 2 {
        let report = dataset::cross_validate(&rows, args.folds, &opts);
        say!(
            "{}-fold cross-validated AUC (held-out rows only):",
            args.folds
        );
        for (source, (auc, n)) in &report.auc {
            say!("  {source:<12} {auc:.3}  ({n} rows)");
        }
        let current = match &args.current {
            None => switchyard::config::load_scorer(
                switchyard::config::DEFAULT_SCORER,
                std::path::Path::new("."),
            )?,
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                let dir = path.parent().unwrap_or(std::path::Path::new("."));
                switchyard::config::load_scorer(&text, dir)
                    .map_err(|e| format!("{}: {e}", path.display()))?
            }
        };
        say!("the scorer in force today, on the same rows:");
        for (source, (auc, n)) in dataset::auc_of(&rows, &current) {
            say!("  {source:<12} {auc:.3}  ({n} rows)");
        }
        if let Some(path) = &args.predictions {
            let mut out = String::new();
            for (id, score) in &report.predictions {
                let route = if *score >= args.threshold {
                    "cloud"
                } else {
                    "local"
                };
                out.push_str(
                    &serde_json::json!({"id": id, "score": score, "route": route}).to_string(),
                );
                out.push('\n');
            }
            std::fs::write(path, out).map_err(|e| format!("{}: {e}", path.display()))?;
            say!("out-of-fold predictions written to {}", path.display());
        }
    }
    let examples: Vec<scorer::Example> = rows.into_iter().map(|r| r.example).collect();
    let model = scorer::train(&examples, &opts);
    let json = serde_json::to_string(&model).map_err(|e| e.to_string())?;
    std::fs::write(&args.out, json + "\n").map_err(|e| format!("{}: {e}", args.out.display()))?;
    say!(
        "scorer fitted on {} rows written to {}",
        examples.len(),
        args.out.display()
    );
    Ok(())
}

fn tokens(table: Option<&std::path::Path>) -> Result<(), String> {
    use std::io::BufRead;
    #[derive(serde::Deserialize)]
    struct Text {
        id: serde_json::Value,
        text: String,
    }
    let table = match table {
        None => switchyard::classify::embedding::builtin()?,
        Some(path) => std::sync::Arc::new(switchyard::classify::StaticTable::load(path)?),
    };
    for (n, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.map_err(|e| format!("reading standard input: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let t: Text = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?;
        say!(
            "{}",
            serde_json::json!({"id": t.id, "ids": table.token_ids(&t.text)})
        );
    }
    Ok(())
}

fn dry_run(config: &Config) -> Result<(), String> {
    use std::io::Read;
    let mut body = Vec::new();
    std::io::stdin()
        .read_to_end(&mut body)
        .map_err(|e| format!("reading standard input: {e}"))?;
    let request = switchyard::api::ChatRequest::parse(body.into())
        .map_err(|e| String::from_utf8_lossy(&e.to_json()).into_owned())?;
    let decision = switchyard::route::decide(config, &request, None);
    say!(
        "{}",
        switchyard::route::explain(config, &decision, &request)
    );
    Ok(())
}

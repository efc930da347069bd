//! `phalanx repl`: an interactive shell joined to the cluster — history, and tab completion of
//! commands and of the action, event and node names the live registry holds.

use super::bench::{Load, closed_loop};
use super::inspect::{Query, gather};
use super::{MeshArgs, settle};
use clap::Args;
use phalanx::{Broker, CallOptions, Error, Result};
use rustyline::completion::{Completer, Pair};
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::history::DefaultHistory;
use rustyline::validate::Validator;
use rustyline::{Context as LineContext, Editor, Helper};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub(crate) struct ReplArgs {
    /// Milliseconds a call may take.
    #[arg(long, default_value_t = 10_000)]
    timeout: u64,
    #[command(flatten)]
    mesh: MeshArgs,
}

/// The commands, with what they take, for completion and `help`.
const COMMANDS: [(&str, &str); 15] = [
    ("call", "ACTION [JSON]          call an action"),
    ("dcall", "NODE ACTION [JSON]    call an action on one node"),
    (
        "emit",
        "EVENT [JSON]           emit an event (one handler per group)",
    ),
    (
        "broadcast",
        "EVENT [JSON]      broadcast an event to every listener",
    ),
    ("bench", "ACTION [JSON]         3 s of calls, 16 in flight"),
    ("nodes", "                      the nodes"),
    (
        "services",
        "                   the services and their nodes",
    ),
    ("actions", "                    the actions and their nodes"),
    ("events", "                     the event subscriptions"),
    ("info", "NODE                   one node"),
    ("metrics", "[NODE]              calls served per action"),
    ("ping", "[NODE]                 round trips over the links"),
    (
        "top",
        "                        one frame of the cluster view",
    ),
    ("help", "                       this list"),
    ("quit", "                       leave (also Ctrl-D)"),
];

pub(crate) async fn run(args: ReplArgs) -> Result<ExitCode> {
    let joined = args.mesh.join(Broker::builder()).await?;
    settle(&joined, args.mesh.wait()).await;
    let broker = joined.broker.clone();
    let mut editor: Editor<Names, DefaultHistory> =
        Editor::new().map_err(|e| Error::validation(format!("no terminal for the REPL: {e}")))?;
    editor.set_helper(Some(Names(broker.clone())));
    let history = std::env::var_os("HOME")
        .map(|home| std::path::PathBuf::from(home).join(".phalanx_history"));
    if let Some(history) = &history {
        let _ = editor.load_history(history);
    }
    println!(
        "joined as {} — {} other nodes; `help` lists the commands, Tab completes",
        broker.node_id(),
        super::available_peers(&broker).len()
    );
    let timeout = Duration::from_millis(args.timeout);
    loop {
        let line = tokio::task::block_in_place(|| editor.readline("phalanx> "));
        let line = match line {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line);
        if matches!(line, "quit" | "exit") {
            break;
        }
        let started = Instant::now();
        match execute(&broker, line, timeout).await {
            Ok(()) => println!("({:.1} ms)", started.elapsed().as_secs_f64() * 1e3),
            Err(err) => println!(
                "{} ({:.1} ms)",
                serde_json::to_string_pretty(err.body()).unwrap_or_else(|_| err.to_string()),
                started.elapsed().as_secs_f64() * 1e3
            ),
        }
    }
    if let Some(history) = &history {
        let _ = editor.save_history(history);
    }
    broker.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Runs one line.
async fn execute(broker: &Broker, line: &str, timeout: Duration) -> Result<()> {
    let (command, rest) = split_word(line);
    let json = |text: &str| -> Result<serde_json::Value> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(text).map_err(|e| Error::validation(format!("that is not JSON: {e}")))
    };
    let required = |word: &str, what: &str| {
        if word.is_empty() {
            Err(Error::validation(format!("{command} needs {what}")))
        } else {
            Ok(())
        }
    };
    match command {
        "call" | "dcall" => {
            let (node, rest) = if command == "dcall" {
                let (node, rest) = split_word(rest);
                required(node, "a node")?;
                (Some(node), rest)
            } else {
                (None, rest)
            };
            let (action, params) = split_word(rest);
            required(action, "an action")?;
            let mut options = CallOptions::new().timeout(timeout);
            if let Some(node) = node {
                options = options.node(node);
            }
            let result: serde_json::Value =
                broker.call_with(action, json(params)?, options).await?;
            super::print_json(&result);
        }
        "emit" | "broadcast" => {
            let (event, data) = split_word(rest);
            required(event, "an event")?;
            let data = json(data)?;
            if command == "emit" {
                broker.emit(event, &data).await?;
            } else {
                broker.broadcast(event, &data).await?;
            }
        }
        "bench" => {
            let (action, params) = split_word(rest);
            required(action, "an action")?;
            let load = Load {
                concurrency: 16,
                duration: Duration::from_secs(3),
                calls: None,
                timeout,
                retries: 0,
                idempotent: false,
            };
            println!(
                "{}",
                closed_loop(broker, action, json(params)?, &load)
                    .await?
                    .summary()
            );
        }
        "nodes" => gather(broker, &Query::Nodes).await?.print(false),
        "services" => gather(broker, &Query::Services).await?.print(false),
        "actions" => gather(broker, &Query::Actions).await?.print(false),
        "events" => gather(broker, &Query::Events).await?.print(false),
        "info" => {
            required(rest, "a node")?;
            gather(broker, &Query::Info(rest.to_owned()))
                .await?
                .print(false);
        }
        "metrics" => {
            let node = Some(rest.to_owned()).filter(|n| !n.is_empty());
            gather(broker, &Query::Metrics(node)).await?.print(false);
        }
        "ping" => {
            let node = Some(rest.to_owned()).filter(|n| !n.is_empty());
            gather(broker, &Query::Ping(node, 3)).await?.print(false);
        }
        "top" => super::top::one_frame(broker).await,
        "help" => {
            for (name, what) in COMMANDS {
                println!("  {name:<10} {what}");
            }
        }
        other => {
            return Err(Error::validation(format!(
                "unknown command '{other}' (`help` lists them)"
            )));
        }
    }
    Ok(())
}

/// The first word of `line`, and the rest.
fn split_word(line: &str) -> (&str, &str) {
    let line = line.trim_start();
    match line.find(char::is_whitespace) {
        Some(at) => (&line[..at], line[at..].trim_start()),
        None => (line, ""),
    }
}

/// Completes commands, then action, event and node names from the live registry. JSON is left
/// alone.
struct Names(Broker);

impl Names {
    /// What may come at word `index` after `command`.
    fn candidates(&self, command: &str, index: usize) -> Vec<String> {
        let broker = &self.0;
        let actions = || broker.actions().into_iter().map(|a| a.name).collect();
        let nodes = || broker.nodes().into_iter().map(|n| n.id).collect();
        match (command, index) {
            ("call" | "bench", 1) | ("dcall", 2) => actions(),
            ("dcall", 1) | ("info" | "metrics" | "ping", 1) => nodes(),
            ("emit" | "broadcast", 1) => broker
                .events()
                .into_iter()
                .map(|e| e.name)
                .filter(|name| !name.contains('*'))
                .collect(),
            _ => Vec::new(),
        }
    }
}

impl Completer for Names {
    type Candidate = Pair;

    fn complete(
        &self,
        line: &str,
        pos: usize,
        _: &LineContext<'_>,
    ) -> rustyline::Result<(usize, Vec<Pair>)> {
        let before = &line[..pos];
        let start = before.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let word = &before[start..];
        let index = before[..start].split_whitespace().count();
        let candidates: Vec<String> = if index == 0 {
            COMMANDS
                .iter()
                .map(|(name, _)| (*name).to_owned())
                .collect()
        } else {
            let command = before.split_whitespace().next().unwrap_or("");
            self.candidates(command, index)
        };
        let mut matches: Vec<Pair> = candidates
            .into_iter()
            .filter(|c| c.starts_with(word))
            .map(|c| Pair {
                display: c.clone(),
                replacement: format!("{c} "),
            })
            .collect();
        matches.sort_by(|a, b| a.display.cmp(&b.display));
        matches.dedup_by(|a, b| a.display == b.display);
        Ok((start, matches))
    }
}

impl Hinter for Names {
    type Hint = String;
}

impl Highlighter for Names {}

impl Validator for Names {}

impl Helper for Names {}

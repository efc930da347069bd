//! `phalanx top`: a live view of the whole cluster — nodes, actions (calls/s, errors/s, p50,
//! p99, open circuits, the last minute), events/s — refreshed from every node's metrics. In a
//! terminal it is a dashboard driven from the keyboard; otherwise it prints plain-text frames.

mod model;
mod render;

use super::{MeshArgs, settle};
use clap::Args;
use phalanx::monitor::Cluster;
use phalanx::{Broker, Error, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind};
use render::Controls;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// Milliseconds between refreshes.
    #[arg(long, default_value_t = 1000)]
    interval: u64,
    /// Print this many plain-text frames and exit (default when stdout is not a terminal: run
    /// until interrupted).
    #[arg(long)]
    frames: Option<u32>,
    #[command(flatten)]
    mesh: MeshArgs,
}

pub(crate) async fn run(args: TopArgs) -> Result<ExitCode> {
    let joined = args.mesh.join(Broker::builder()).await?;
    settle(&joined, args.mesh.wait()).await;
    let broker = joined.broker.clone();
    let interval = Duration::from_millis(args.interval.max(100));
    let shown = if std::io::stdout().is_terminal() && args.frames.is_none() {
        dashboard(&broker, interval).await
    } else {
        plain(&broker, interval, args.frames).await;
        Ok(())
    };
    broker.stop().await;
    shown.map(|()| ExitCode::SUCCESS)
}

/// Plain-text frames, every `interval`, `frames` of them (or until Ctrl-C).
async fn plain(broker: &Broker, interval: Duration, frames: Option<u32>) {
    let mut cluster = Cluster::default();
    let controls = Controls::default();
    // Rates are differences: the first look is only what the next is measured against.
    cluster.refresh(broker, interval).await;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let mut shown = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = super::shutdown_signal() => return,
        }
        cluster.refresh(broker, interval).await;
        render::plain(&cluster, &controls);
        shown += 1;
        if frames.is_some_and(|f| shown >= f) {
            return;
        }
    }
}

/// One plain frame of the cluster, over the next second (the REPL's `top`).
pub(super) async fn one_frame(broker: &Broker) {
    let interval = Duration::from_secs(1);
    let mut cluster = Cluster::default();
    cluster.refresh(broker, interval).await;
    tokio::time::sleep(interval).await;
    cluster.refresh(broker, interval).await;
    render::plain(&cluster, &Controls::default());
}

/// The terminal dashboard, until `q`, Ctrl-C or SIGTERM.
async fn dashboard(broker: &Broker, interval: Duration) -> Result<()> {
    let mut terminal = ratatui::init();
    let (keys, mut pressed) = mpsc::channel(16);
    // Reading the keyboard blocks: a thread of its own, which ends when the dashboard does.
    std::thread::spawn(move || {
        while !keys.is_closed() {
            match event::poll(Duration::from_millis(100)) {
                Ok(true) => {
                    if let Ok(Event::Key(key)) = event::read()
                        && key.kind == KeyEventKind::Press
                        && keys.blocking_send(key.code).is_err()
                    {
                        return;
                    }
                }
                Ok(false) => {}
                Err(_) => return,
            }
        }
    });
    let mut cluster = Cluster::default();
    let mut controls = Controls::default();
    cluster.refresh(broker, interval).await;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    let outcome = loop {
        tokio::select! {
            _ = tick.tick() => cluster.refresh(broker, interval).await,
            _ = super::shutdown_signal() => break Ok(()),
            key = pressed.recv() => match key {
                None => break Ok(()),
                Some(key) if controls.editing => match key {
                    KeyCode::Enter => controls.editing = false,
                    KeyCode::Esc => {
                        controls.editing = false;
                        controls.filter.clear();
                    }
                    KeyCode::Backspace => {
                        controls.filter.pop();
                    }
                    KeyCode::Char(c) => controls.filter.push(c),
                    _ => {}
                },
                Some(KeyCode::Char('q')) => break Ok(()),
                Some(KeyCode::Char('s')) => controls.sort = controls.sort.next(),
                Some(KeyCode::Char('/')) => controls.editing = true,
                Some(KeyCode::Esc) => controls.filter.clear(),
                Some(_) => {}
            },
        }
        if let Err(err) = terminal.draw(|frame| render::draw(frame, &cluster, &controls)) {
            break Err(Error::transport(format!("cannot draw: {err}")));
        }
    };
    ratatui::restore();
    outcome
}

//! The two sides of a cross-process bench: the measuring process starts a serving process (the
//! same bench binary, re-run with arguments saying what to serve), reads its CPU time and
//! resident memory from `/proc`, and asks it questions (how many allocations it has made, how
//! many heap bytes it holds, and whatever the bench's server answers besides); the serving
//! process answers on stdin until stdin closes. A counting allocator in both processes
//! supplies the allocation and heap counts.
#![allow(dead_code)] // each bench uses part of it

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

/// What the counting allocator counts.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Counting {
    /// Nothing: timings taken without the counters' cost.
    Nothing,
    /// Allocations (the default).
    Allocations,
    /// Allocations and the heap bytes held (a second counter touched on every free too).
    AllocationsAndHeap,
}

/// Starts counting what `counting` says, from now on.
pub(crate) fn count(counting: Counting) {
    COUNTING.store(counting as u8, Ordering::Relaxed);
}

fn counting() -> u8 {
    COUNTING.load(Ordering::Relaxed)
}

static COUNTING: AtomicU8 = AtomicU8::new(Counting::Allocations as u8);

/// Allocations this process has made while counting.
pub(crate) static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// Heap bytes allocated minus heap bytes freed while counting them.
pub(crate) static HEAP_BYTES: AtomicI64 = AtomicI64::new(0);

/// The counting allocator: the system's, counted.
struct CountingAllocator;

impl CountingAllocator {
    fn counted(&self, grown: i64) {
        let counting = counting();
        if counting >= Counting::Allocations as u8 {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        if counting == Counting::AllocationsAndHeap as u8 {
            HEAP_BYTES.fetch_add(grown, Ordering::Relaxed);
        }
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.counted(layout.size() as i64);
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if counting() == Counting::AllocationsAndHeap as u8 {
            HEAP_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // SAFETY: `ptr` came from `alloc` above, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.counted(new_size as i64 - layout.size() as i64);
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// The serving process of one row, killed on drop.
pub(crate) struct Server {
    child: Child,
    /// Closed to ask the server to stop.
    input: Option<ChildStdin>,
    output: BufReader<ChildStdout>,
    /// What it announced: an address, a socket path, or nothing.
    pub(crate) address: String,
}

impl Server {
    /// Runs this bench again with `args` (which tell it what to serve).
    pub(crate) fn start(args: &[&str]) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("this bench"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("serving process");
        let input = child.stdin.take().expect("stdin");
        let mut output = BufReader::new(child.stdout.take().expect("stdout"));
        let address = read_line(&mut output)
            .strip_prefix("ready")
            .expect("the server says `ready [ADDRESS]`")
            .trim()
            .to_owned();
        Self {
            child,
            input: Some(input),
            output,
            address,
        }
    }

    /// CPU time the serving process has used so far, µs.
    pub(crate) fn cpu_us(&self) -> f64 {
        process_cpu_us(&format!("/proc/{}/stat", self.child.id()))
    }

    /// Resident memory of the serving process now, bytes.
    pub(crate) fn resident_bytes(&self) -> f64 {
        resident_bytes(&format!("/proc/{}/status", self.child.id()))
    }

    /// Allocations the serving process has made so far.
    pub(crate) fn allocations(&mut self) -> u64 {
        self.ask("allocations").parse().expect("a count")
    }

    /// Heap bytes the serving process holds now (counted only where its bench counts them).
    pub(crate) fn heap_bytes(&mut self) -> i64 {
        self.ask("heap").parse().expect("a byte count")
    }

    /// The serving process's answer to `question` (one line each way).
    pub(crate) fn ask(&mut self, question: &str) -> String {
        let input = self.input.as_mut().expect("the server runs");
        writeln!(input, "{question}").expect("ask the server");
        read_line(&mut self.output)
    }
}

impl Drop for Server {
    /// Closes its input (the server stops gracefully and exits), then makes sure it is gone.
    fn drop(&mut self) {
        drop(self.input.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_line(output: &mut impl BufRead) -> String {
    let mut line = String::new();
    output.read_line(&mut line).expect("the server answers");
    line.trim().to_owned()
}

/// User + system CPU time of the process whose `stat` file is `path`, µs.
pub(crate) fn process_cpu_us(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the state.
    let hz = 100.0;
    (ticks(11) + ticks(12)) / hz * 1e6
}

/// Resident memory (`VmRSS`) of the process whose `status` file is `path`, bytes.
pub(crate) fn resident_bytes(path: &str) -> f64 {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(0.0);
    kib * 1024.0
}

/// The serving side: says `ready ADDRESS`, then answers `allocations` and `heap` on stdin until
/// stdin closes (the measuring process is done).
pub(crate) async fn serve_until_stdin_closes(address: &str) {
    serve_questions_until_stdin_closes(address, |_| None).await;
}

/// As [`serve_until_stdin_closes`], with `answer` answering the bench's own questions (`None`:
/// not one of them; the measuring process is then told `?`).
pub(crate) async fn serve_questions_until_stdin_closes(
    address: &str,
    answer: impl Fn(&str) -> Option<String> + Send + 'static,
) {
    println!("ready {address}");
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(question) = line else { break };
            let reply = match question.as_str() {
                "allocations" => ALLOCATIONS.load(Ordering::Relaxed).to_string(),
                "heap" => HEAP_BYTES.load(Ordering::Relaxed).to_string(),
                other => answer(other).unwrap_or_else(|| "?".to_owned()),
            };
            println!("{reply}");
        }
    })
    .await
    .expect("stdin reader");
}

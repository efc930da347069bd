//! The two sides of a cross-process bench: the measuring process starts a serving process (the
//! same bench binary, re-run with arguments saying what to serve), reads its CPU time from
//! `/proc`, and asks it how many allocations it has made; the serving process answers on stdin
//! until stdin closes. A counting allocator in both processes supplies the allocation counts.
#![allow(dead_code)] // each bench uses part of it

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Counts allocations of this process.
struct Counting;

pub(crate) static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, i.e. from `System`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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

    /// Allocations the serving process has made so far.
    pub(crate) fn allocations(&mut self) -> u64 {
        let input = self.input.as_mut().expect("the server runs");
        writeln!(input, "allocations").expect("ask the server");
        read_line(&mut self.output).parse().expect("a count")
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

/// The serving side: says `ready ADDRESS`, then answers `allocations` on stdin until stdin
/// closes (the measuring process is done).
pub(crate) async fn serve_until_stdin_closes(address: &str) {
    println!("ready {address}");
    tokio::task::spawn_blocking(|| {
        for line in std::io::stdin().lock().lines() {
            match line.as_deref() {
                Ok("allocations") => println!("{}", ALLOCATIONS.load(Ordering::Relaxed)),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    })
    .await
    .expect("stdin reader");
}

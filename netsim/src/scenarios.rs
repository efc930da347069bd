//! The scenarios: each builds its own network, measures, and judges against its threshold.

use crate::net::{Net, unix_ms};
use std::path::Path;
use std::time::{Duration, Instant};

/// One line of the summary table.
pub struct Row {
    pub scenario: String,
    pub figure: String,
    pub threshold: String,
    pub pass: bool,
}

fn row(scenario: &str, figure: String, threshold: &str, pass: bool) -> Row {
    println!(
        "  {scenario}: {figure} (threshold {threshold}) → {}",
        if pass { "pass" } else { "FAIL" }
    );
    Row {
        scenario: scenario.to_owned(),
        figure,
        threshold: threshold.to_owned(),
        pass,
    }
}

type Scenario = fn(&str, &Path) -> Result<Vec<Row>, String>;

/// Every scenario, by name.
pub const ALL: &[(&str, Scenario)] = &[
    ("mdns", mdns_discovery),
    ("gossip", seed_gossip),
    ("loss", calls_under_loss),
    ("partition", partition_and_heal),
    ("crash", crash_under_load),
    ("crash-retry", crash_with_retries),
    ("intruder", wrong_secret),
    ("rolling", rolling_restart),
    ("rogue", rogue_host),
    ("udp-dropped", udp_dropped),
];

fn all(n: usize) -> Vec<usize> {
    (0..n).collect()
}

/// `n` hosts, each running a node (mDNS on), converged into one mesh.
fn formed_mesh(run: &str, scenario: usize, n: usize, bin: &Path) -> Result<Net, String> {
    let mut net = Net::new(run, scenario, n, bin.to_owned())?;
    for i in 0..n {
        net.start(i, &[])?;
    }
    net.converge(&all(n), Duration::from_secs(10))
        .ok_or("mesh never formed")?;
    Ok(net)
}

/// A background `phalanx bench demo.echo` from host 1 for `seconds`, 8 in flight. Host 1's own
/// node must be stopped first: callers prefer a replica on their own host, and these scenarios
/// need the load spread over the replicas that fail.
fn background_bench(
    net: &Net,
    seconds: &str,
    timeout_ms: &str,
    extra: &[&str],
) -> std::process::Child {
    let args = [
        "bench",
        "demo.echo",
        "{}",
        "--duration",
        seconds,
        "--concurrency",
        "8",
        "--timeout",
        timeout_ms,
        "--json",
    ];
    net.cli_spawn(0, &net.addr(1), &[&args[..], extra].concat())
}

/// 1. Eight hosts, mDNS only (no seeds): every registry full within 3 s.
fn mdns_discovery(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let mut net = Net::new(run, 1, 8, bin.to_owned())?;
    let started = unix_ms();
    for i in 0..8 {
        net.start(i, &[])?;
    }
    let done = net.converge(&all(8), Duration::from_secs(10));
    let figure = done.map(|t| t.saturating_sub(started));
    Ok(vec![row(
        "1. mDNS discovery, 8 hosts",
        figure.map_or("no convergence in 10 s".into(), |ms| {
            format!("full registries in {ms} ms")
        }),
        "≤ 3000 ms",
        figure.is_some_and(|ms| ms <= 3000),
    )])
}

/// 2. Eight hosts, multicast dropped, one seed each (a chain): full mesh by gossip within 5 s.
fn seed_gossip(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let mut net = Net::new(run, 2, 8, bin.to_owned())?;
    for i in 0..8 {
        net.nft(
            i,
            "table inet netsim {
                chain out { type filter hook output priority 0; meta pkttype multicast drop; }
                chain in { type filter hook input priority 0; meta pkttype multicast drop; }
            }",
        )?;
    }
    let started = unix_ms();
    for i in 0..8 {
        let seed = if i == 0 { None } else { Some(net.addr(i - 1)) };
        match seed {
            Some(seed) => net.start(i, &["--seed", &seed])?,
            None => net.start(i, &[])?,
        }
    }
    let done = net.converge(&all(8), Duration::from_secs(15));
    let figure = done.map(|t| t.saturating_sub(started));
    Ok(vec![row(
        "2. seed + gossip, multicast dropped, 8 hosts",
        figure.map_or("no convergence in 15 s".into(), |ms| {
            format!("full mesh in {ms} ms")
        }),
        "≤ 5000 ms",
        figure.is_some_and(|ms| ms <= 5000),
    )])
}

fn loss_rules(percent: u32) -> String {
    format!(
        "table inet netsim {{\n chain in {{ type filter hook input priority 0; iifname != \"lo\" meta l4proto udp numgen random mod 100 < {percent} drop; }}\n}}"
    )
}

fn bench_json(out: &std::process::Output) -> Result<serde_json::Value, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).map_err(|e| format!("bench printed {text:?}: {e}"))
}

/// 3. 5 000 calls across hosts at 5 % and at 20 % packet loss: every call succeeds.
fn calls_under_loss(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let mut net = formed_mesh(run, 3, 4, bin)?;
    // The caller runs on h1 with no node of its own there, so every call crosses the lossy LAN
    // to h2..h4.
    net.stop(0);
    let via = net.addr(1);
    let mut rows = Vec::new();
    for percent in [5, 20] {
        for i in 0..4 {
            net.nft_clear(i);
            net.nft(i, &loss_rules(percent))?;
        }
        let bench = [
            "bench",
            "demo.echo",
            "{}",
            "--calls",
            "5000",
            "--concurrency",
            "16",
            "--timeout",
            "30000",
            "--json",
        ];
        let report = bench_json(&net.cli_via(0, &via, &bench, None))?;
        let errors = report["errors"].as_u64().unwrap_or(u64::MAX);
        let calls = report["calls"].as_u64().unwrap_or(0);
        rows.push(row(
            &format!("3. 5000 calls across hosts at {percent} % loss"),
            format!(
                "{calls} calls, {errors} failed, p50 {} µs, p99 {} µs",
                report["p50_us"], report["p99_us"]
            ),
            "0 failed",
            errors == 0 && calls == 5000,
        ));
    }
    Ok(rows)
}

fn partition_rules(far: &[String]) -> String {
    let set = far.join(", ");
    format!(
        "table inet netsim {{
            chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}
            chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}
        }}"
    )
}

/// 4. Partition 6 hosts 3 | 3: pinned calls to the far side fail fast once the lease expires;
///    after heal the mesh re-forms within 5 s and calls succeed.
fn partition_and_heal(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let net = formed_mesh(run, 4, 6, bin)?;
    let (left, right) = ([0usize, 1, 2], [3usize, 4, 5]);
    let ips = |side: &[usize]| {
        side.iter()
            .map(|&i| net.hosts[i].ip.clone())
            .collect::<Vec<_>>()
    };
    let (left_ips, right_ips) = (ips(&left), ips(&right));
    let cut = Instant::now();
    for &i in &left {
        net.nft(i, &partition_rules(&right_ips))?;
    }
    for &i in &right {
        net.nft(i, &partition_rules(&left_ips))?;
    }
    let split = net.converge(&left, Duration::from_secs(10)).is_some()
        && net.converge(&right, Duration::from_secs(10)).is_some();
    let lease_seen = cut.elapsed();
    let asked = Instant::now();
    let out = net.cli(
        0,
        &[
            "call",
            "demo.echo",
            "{}",
            "--node",
            "h5",
            "--wait",
            "300",
            "--timeout",
            "1000",
        ],
        None,
    );
    let answered = asked.elapsed();
    let err = String::from_utf8_lossy(&out.stdout).into_owned();
    let fast = !out.status.success()
        && err.contains("ServiceNotFoundError")
        && answered < Duration::from_secs(2);
    let mut rows = vec![row(
        "4a. partition 3|3: far-side call after the lease",
        format!(
            "sides split {} ms after the cut; call failed in {} ms with {}",
            lease_seen.as_millis(),
            answered.as_millis(),
            if err.contains("ServiceNotFoundError") {
                "ServiceNotFoundError (404)"
            } else {
                "something else"
            }
        ),
        "split seen, clear error < 2000 ms",
        split && fast,
    )];
    let healed_at = unix_ms();
    for i in 0..6 {
        net.nft_clear(i);
    }
    let done = net.converge(&all(6), Duration::from_secs(15));
    let figure = done.map(|t| t.saturating_sub(healed_at));
    let out = net.cli(
        0,
        &["call", "demo.echo", r#"{"after":"heal"}"#, "--node", "h5"],
        None,
    );
    rows.push(row(
        "4b. partition heal",
        figure.map_or("no re-formation in 15 s".into(), |ms| {
            format!(
                "mesh re-formed in {ms} ms; far-side call {}",
                if out.status.success() { "ok" } else { "FAILED" }
            )
        }),
        "≤ 5000 ms, call ok",
        figure.is_some_and(|ms| ms <= 5000) && out.status.success(),
    ));
    Ok(rows)
}

/// 5. `kill -9` of a replica under load: the error window is bounded by the lease.
fn crash_under_load(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let mut net = formed_mesh(run, 5, 4, bin)?;
    net.stop(0);
    let bench = background_bench(&net, "8", "1000", &[]);
    std::thread::sleep(Duration::from_secs(3));
    net.kill9(2);
    let out = bench.wait_with_output().map_err(|e| e.to_string())?;
    let report = bench_json(&out)?;
    let window = match (
        report["first_error_ms"].as_u64(),
        report["last_error_ms"].as_u64(),
    ) {
        (Some(first), Some(last)) => last - first,
        _ => 0,
    };
    // Lease (2 s) plus one call timeout (1 s) for calls already sent, plus scheduling slack.
    let bound = 2000 + 1000 + 500;
    Ok(vec![row(
        "5. kill -9 of a replica under load",
        format!(
            "{} calls, {} failed, error window {window} ms",
            report["calls"], report["errors"]
        ),
        "window ≤ 3500 ms (lease 2 s + call timeout 1 s)",
        window <= bound && report["calls"].as_u64().unwrap_or(0) > 0,
    )])
}

/// 5b. The same crash with a retry policy on the caller: zero failed calls.
fn crash_with_retries(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let mut net = formed_mesh(run, 8, 4, bin)?;
    net.stop(0);
    // Calls stuck on the dead replica fail when its lease (2 s) runs out, then go elsewhere.
    // demo.echo is safe to run twice: the calls the crash leaves unanswered may be retried.
    let bench = background_bench(&net, "8", "6000", &["--retries", "3", "--idempotent"]);
    std::thread::sleep(Duration::from_secs(3));
    net.kill9(2);
    let out = bench.wait_with_output().map_err(|e| e.to_string())?;
    let report = bench_json(&out)?;
    let errors = report["errors"].as_u64().unwrap_or(u64::MAX);
    Ok(vec![row(
        "5b. kill -9 of a replica under load, caller retries",
        format!(
            "{} calls, {errors} failed, p99 {} µs{}",
            report["calls"],
            report["p99_us"],
            report["first_error"]
                .as_str()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ),
        "0 failed",
        errors == 0 && report["calls"].as_u64().unwrap_or(0) > 0,
    )])
}

/// 6. A host with the wrong secret on the same LAN never appears in any registry.
fn wrong_secret(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let mut net = Net::new(run, 6, 4, bin.to_owned())?;
    for i in 0..3 {
        net.start(i, &[])?;
    }
    let real = std::mem::replace(
        &mut net.secret,
        "the-wrong-secret-0123456789abcdefghij".into(),
    );
    net.start(3, &["--seed", &format!("{}:7000", net.hosts[0].ip)])?;
    net.secret = real;
    net.converge(&[0, 1, 2], Duration::from_secs(10))
        .ok_or("mesh never formed")?;
    std::thread::sleep(Duration::from_secs(3));
    let seen_by = (0..3)
        .filter(|&i| {
            net.peers(i)
                .is_some_and(|(p, _)| p.iter().any(|n| n == "h4"))
        })
        .count();
    let intruder_sees = net.peers(3).map_or(0, |(p, _)| p.len());
    // From the intruder's host, with its secret, through a member: the handshake is refused.
    let member = net.addr(0);
    let out = net.cli_via(
        3,
        &member,
        &["call", "demo.echo", "{}", "--wait", "2000"],
        Some("the-wrong-secret-0123456789abcdefghij"),
    );
    let auth = String::from_utf8_lossy(&out.stdout).contains("AuthenticationError")
        && !out.status.success();
    Ok(vec![row(
        "6. wrong secret on the LAN",
        format!(
            "seen by {seen_by} members; it sees {intruder_sees}; its call → {}",
            if auth { "AuthenticationError" } else { "other" }
        ),
        "seen by 0, sees 0, authentication error",
        seen_by == 0 && intruder_sees == 0 && auth,
    )])
}

/// 7. Rolling restart (graceful stop/start) of 3 replicas under steady load: zero failed calls.
fn rolling_restart(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let mut net = formed_mesh(run, 7, 4, bin)?;
    net.stop(0);
    let bench = background_bench(&net, "14", "5000", &[]);
    std::thread::sleep(Duration::from_secs(2));
    let mut restart = || -> Result<(), String> {
        for i in 1..4 {
            net.stop(i);
            net.start(i, &[])?;
            net.converge(&[1, 2, 3], Duration::from_secs(10))
                .ok_or("node never rejoined")?;
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    };
    let restarted = restart();
    let out = bench.wait_with_output().map_err(|e| e.to_string())?;
    restarted?;
    let report = bench_json(&out)?;
    let errors = report["errors"].as_u64().unwrap_or(u64::MAX);
    Ok(vec![row(
        "7. rolling restart of 3 replicas under load",
        format!(
            "{} calls, {errors} failed{}",
            report["calls"],
            report["first_error"]
                .as_str()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        ),
        "0 failed",
        errors == 0,
    )])
}

/// Scenario 8: a rogue host floods the LAN with mDNS records — 200 ghost ids at a third
/// party's and at a member's address, and a real member's id at the third party — unsigned or
/// with a made-up signature, and runs a member (it holds the secret) that gossips 200 ghosts
/// and a real member's id at the third party without records that vouch for them. The mesh
/// keeps its members, no packet leaves for the third party, and every member starts fewer
/// handshakes than its budget (20 per second, 40 at once).
fn rogue_host(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let mut net = Net::new(run, 8, 5, bin.to_owned())?;
    // h5 runs no node: it is the third party, counting what reaches its port.
    net.nft(
        4,
        "table inet netsim {
            counter reached {}
            chain in { type filter hook input priority 0; udp dport 7000 counter name reached; }
        }",
    )?;
    // Each member counts the QUIC Initial packets it sends: the handshakes it starts.
    for i in 0..3 {
        net.nft(
            i,
            "table inet netsim {
                counter initials {}
                chain out { type filter hook output priority 0; udp dport 7000 @th,64,8 & 0xf0 == 0xc0 counter name initials; }
            }",
        )?;
    }
    let (third, victim) = (net.hosts[4].ip.clone(), net.hosts[0].ip.clone());
    let mut mdns = net.spawn_self(3, &["--rogue-mdns", "200", &third, &victim, "h2"])?;
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    for i in 0..3 {
        net.start(i, &[])?;
    }
    let formed = net.converge(&[0, 1, 2], Duration::from_secs(10));
    let mut member = net.spawn_self(3, &["--rogue-member", &net.addr(0), &third, "h2"])?;
    std::thread::sleep(Duration::from_secs(8));
    let allowed = ["h1", "h2", "h3", "rogue"];
    let members_only = (0..3).all(|i| {
        net.peers(i)
            .is_some_and(|(peers, _)| peers.iter().all(|p| allowed.contains(&p.as_str())))
    });
    let still_formed = net.converge(&[0, 1, 2], Duration::from_secs(5)).is_some();
    let reached = net.nft_counter(4, "reached");
    let seconds = started.elapsed().as_secs_f64();
    let initials: Vec<u64> = (0..3)
        .map(|i| net.nft_counter(i, "initials").unwrap_or(u64::MAX))
        .collect();
    // A handshake's first flight is one or two Initial packets; retransmits count too.
    let budget = 3.0 * (40.0 + 20.0 * seconds);
    let within_budget = initials.iter().all(|&n| (n as f64) <= budget);
    for (name, rogue) in [("mDNS", &mut mdns), ("member", &mut member)] {
        if rogue.try_wait().map_err(|e| e.to_string())?.is_some() {
            return Err(format!(
                "the rogue {name} died: the scenario proved nothing"
            ));
        }
        let _ = rogue.kill();
        let _ = rogue.wait();
    }
    Ok(vec![row(
        "8. rogue host: 201 forged mDNS records and a member gossiping 201 poisoned peers",
        format!(
            "mesh {}; registries {}; packets to the third party: {}; Initial packets sent per member in {seconds:.0} s: {initials:?}",
            if formed.is_some() && still_formed {
                "formed and kept"
            } else {
                "broken"
            },
            if members_only {
                "members only"
            } else {
                "polluted"
            },
            reached.map_or("unknown".into(), |n| n.to_string())
        ),
        "mesh kept, members only, 0 packets to the third party, handshakes within the budget",
        formed.is_some() && still_formed && members_only && reached == Some(0) && within_budget,
    )])
}

/// Drops every UDP datagram in or out of a host's LAN interface (multicast included), and
/// counts them.
const NO_UDP: &str = "table inet netsim {
    counter udp_dropped {}
    chain in { type filter hook input priority 0; iifname != \"lo\" meta l4proto udp counter name udp_dropped drop; }
    chain out { type filter hook output priority 0; oifname != \"lo\" meta l4proto udp counter name udp_dropped drop; }
}";

/// The kind of link host `i`'s node has to each other node (from its `$node.list`, asked
/// through host `via`'s node).
fn links_of(net: &Net, via: usize, i: usize) -> Result<Vec<(String, String)>, String> {
    let host = format!("h{}", i + 1);
    let out = net.cli(via, &["call", "$node.list", "{}", "--node", &host], None);
    let text = String::from_utf8_lossy(&out.stdout);
    let list: serde_json::Value = serde_json::from_str(text.trim())
        .map_err(|e| format!("$node.list of {host}: {text:?}: {e}"))?;
    let mut links: Vec<(String, String)> = list
        .as_array()
        .ok_or("$node.list is not a list")?
        .iter()
        .filter(|n| n["available"] == true && n["local"] == false)
        .filter_map(|n| Some((n["id"].as_str()?.to_owned(), n["link"].as_str()?.to_owned())))
        .filter(|(id, _)| id.starts_with('h') && id[1..].parse::<u32>().is_ok())
        .collect();
    links.sort();
    Ok(links)
}

/// 9. UDP dropped on every host (so no QUIC and no mDNS), one seed each: the mesh forms over
///    TCP and calls across hosts succeed; once UDP passes again, a node that joins links to
///    every other over QUIC.
fn udp_dropped(run: &str, bin: &Path) -> Result<Vec<Row>, String> {
    let mut net = Net::new(run, 9, 5, bin.to_owned())?;
    for i in 0..4 {
        net.nft(i, NO_UDP)?;
    }
    let started = unix_ms();
    for i in 0..4 {
        match i {
            0 => net.start(i, &[])?,
            _ => net.start(i, &["--seed", &net.addr(i - 1)])?,
        }
    }
    let done = net.converge(&all(4), Duration::from_secs(30));
    let formed = done.map(|t| t.saturating_sub(started));
    let tcp_links = (0..4)
        .map(|i| links_of(&net, i, i))
        .collect::<Result<Vec<_>, _>>()?;
    let all_tcp = tcp_links
        .iter()
        .all(|links| links.len() == 3 && links.iter().all(|(_, kind)| kind == "tcp"));
    let dropped = (0..4)
        .map(|i| net.nft_counter(i, "udp_dropped").unwrap_or(0))
        .sum::<u64>();
    // The caller on h1 has no node of its own there (callers prefer their own host), so every
    // call crosses the LAN over TCP.
    net.stop(0);
    let bench = [
        "bench",
        "demo.echo",
        "{}",
        "--calls",
        "2000",
        "--concurrency",
        "16",
        "--json",
    ];
    let report = bench_json(&net.cli_via(0, &net.addr(1), &bench, None))?;
    let (calls, errors) = (
        report["calls"].as_u64().unwrap_or(0),
        report["errors"].as_u64().unwrap_or(u64::MAX),
    );
    let mut rows = vec![row(
        "9a. UDP dropped, 4 hosts, seeds: mesh over TCP",
        format!(
            "full mesh in {}, links {}, {dropped} UDP datagrams dropped; {calls} calls, {errors} failed, p50 {} µs",
            formed.map_or("no convergence in 30 s".into(), |ms| format!("{ms} ms")),
            if all_tcp {
                "all tcp".to_owned()
            } else {
                format!("{tcp_links:?}")
            },
            report["p50_us"],
        ),
        "formed, every link tcp, 0 of 2000 failed",
        formed.is_some() && all_tcp && dropped > 0 && errors == 0 && calls == 2000,
    )];

    for i in 0..4 {
        net.nft_clear(i);
    }
    net.start(4, &["--seed", &net.addr(1)])?;
    let joined = net
        .converge(&[1, 2, 3, 4], Duration::from_secs(15))
        .is_some();
    let newcomer = links_of(&net, 4, 4)?;
    let all_quic = newcomer.len() == 3 && newcomer.iter().all(|(_, kind)| kind == "quic");
    rows.push(row(
        "9b. UDP back: a joining node's links",
        format!(
            "{}; h5's links: {}",
            if joined {
                "joined"
            } else {
                "did not join in 15 s"
            },
            if all_quic {
                "all quic".to_owned()
            } else {
                format!("{newcomer:?}")
            }
        ),
        "joined, every link quic",
        joined && all_quic,
    ));
    Ok(rows)
}

//! A rogue host on the LAN: announces Phalanx mDNS records it has no right to — ghost node ids,
//! a real node's id, addresses of a third party and of a victim — unsigned or with a made-up
//! signature. Run by the harness inside a host's namespace as `netsim --rogue-mdns ...`.

use mdns_sd::{ServiceDaemon, ServiceInfo};
use std::net::IpAddr;
use std::time::Duration;

const SERVICE_TYPE: &str = "_phalanx._udp.local.";

/// `--rogue-mdns GHOSTS THIRD_PARTY_IP VICTIM_IP REAL_ID`: announces `GHOSTS` ghost ids half at
/// the third party and half at the victim, plus the real node id at the third party, then
/// answers queries for them until killed.
pub fn run(args: &[String]) -> Result<(), String> {
    let [ghosts, third, victim, real] = args else {
        return Err("--rogue-mdns GHOSTS THIRD_PARTY_IP VICTIM_IP REAL_ID".into());
    };
    let ghosts: usize = ghosts.parse().map_err(|e| format!("GHOSTS: {e}"))?;
    let third: IpAddr = third.parse().map_err(|e| format!("THIRD_PARTY_IP: {e}"))?;
    let victim: IpAddr = victim.parse().map_err(|e| format!("VICTIM_IP: {e}"))?;
    let daemon = ServiceDaemon::new().map_err(|e| e.to_string())?;
    let mut records: Vec<(String, IpAddr)> = (0..ghosts)
        .map(|i| {
            (
                format!("ghost-{i}"),
                if i % 2 == 0 { third } else { victim },
            )
        })
        .collect();
    records.push((real.clone(), third));
    for (i, (id, ip)) in records.iter().enumerate() {
        let addrs = format!("{ip}:7000");
        // Every other record carries a made-up signature, the rest none at all.
        let sig = if i % 2 == 0 {
            "00".repeat(16)
        } else {
            String::new()
        };
        let properties = [
            ("id", id.as_str()),
            ("ns", ""),
            ("pv", "2"),
            ("fp", "00"),
            ("addrs", addrs.as_str()),
            ("sig", sig.as_str()),
        ];
        let instance = format!("rogue-{i}");
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance,
            &format!("{instance}.local."),
            *ip,
            7000,
            &properties[..],
        )
        .map_err(|e| e.to_string())?;
        // The daemon's command queue is bounded: wait for room rather than give up.
        let mut tries = 0;
        while let Err(err) = daemon.register(info.clone()) {
            tries += 1;
            if tries > 500 {
                return Err(err.to_string());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    println!("rogue: announcing {} forged records", records.len());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

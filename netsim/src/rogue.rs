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

/// `--rogue-member SEED THIRD_PARTY_IP REAL_ID` (secret in `PHALANX_SECRET`): a member with valid
/// credentials that joins through `SEED` and gossips 200 ghost peers and the real node's id, all
/// at the third party, without the records that would vouch for them; it repeats its INFO every
/// second until killed.
pub fn run_member(args: &[String]) -> Result<(), String> {
    use phalanx::identity::ClusterCa;
    use phalanx::protocol::packet::{Info, PROTOCOL_VERSION, Packet, PacketBody, PeerInfo};
    use phalanx::transport::{
        LinkKind, MeshTransport, TransportContext, TransportHandler, Transporter,
    };
    use std::sync::Arc;

    let [seed, third, real] = args else {
        return Err("--rogue-member SEED THIRD_PARTY_IP REAL_ID".into());
    };
    let secret = std::env::var("PHALANX_SECRET").map_err(|_| "PHALANX_SECRET is not set")?;
    let poisoned = |id: String| PeerInfo {
        node_id: id,
        addresses: vec![format!("{third}:7000")],
        address_record: None,
    };
    let info = Info {
        instance_id: "rogue-1".into(),
        protocol_version: PROTOCOL_VERSION,
        seq: 1,
        peers: (0..200)
            .map(|i| poisoned(format!("ghost-{i}")))
            .chain([poisoned(real.clone())])
            .collect(),
        ..Info::default()
    };

    struct Rogue(Info);
    impl TransportHandler for Rogue {
        fn on_packet(&self, _: Packet, _: LinkKind) {}
        fn on_link_up(&self, _: &str, _: LinkKind) {}
        fn on_link_down(&self, _: &str, _: LinkKind) {}
        fn on_bus(&self, _: LinkKind, _: bool) {}
        fn hello(&self) -> Packet {
            Packet::new("rogue", PacketBody::Info(self.0.clone()))
        }
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let quic = MeshTransport::builder()
            .listen("0.0.0.0:7000".parse().expect("an address"))
            .seed(seed.clone())
            .cluster_ca(ClusterCa::secret(secret))
            .mdns(false)
            .build();
        quic.start(TransportContext::new(
            "rogue",
            "",
            Arc::new(Rogue(info.clone())),
        ))
        .await
        .map_err(|e| e.to_string())?;
        println!("rogue: a member gossiping 201 poisoned peers");
        let packet = Packet::new("rogue", PacketBody::Info(info));
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let _ = quic.broadcast(&packet).await;
        }
    })
}

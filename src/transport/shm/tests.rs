//! Two shared-memory transports on one host, without brokers.

use super::*;
use crate::protocol::codec::Codec;
use crate::protocol::packet::{PacketBody, Ping};
use crate::transport::TransportHandler;
use bytes::Bytes;
use socket::PeerAddress;
use std::time::Duration;

/// A ping id that makes the recording handler panic.
const PANIC_ON_PING: u64 = u64::MAX;

/// Records what a transport reports.
#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    /// Ping ids, and whether the link's reader thread delivered each.
    pings: Mutex<Vec<(u64, bool)>>,
}

impl TransportHandler for Recorder {
    fn on_packet(&self, packet: Packet, link: LinkKind) {
        if let PacketBody::Ping(ping) = &packet.body {
            assert_ne!(ping.id, PANIC_ON_PING, "the handler panics on this ping");
            let by_reader = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("phalanx-shm"));
            self.pings.lock().unwrap().push((ping.id, by_reader));
        }
        let what = format!("packet {} {:?} {link}", packet.sender, packet.kind());
        self.events.lock().unwrap().push(what);
    }
    fn on_link_up(&self, node_id: &str, link: LinkKind) {
        self.events
            .lock()
            .unwrap()
            .push(format!("up {node_id} {link}"));
    }
    fn on_link_down(&self, node_id: &str, link: LinkKind) {
        self.events
            .lock()
            .unwrap()
            .push(format!("down {node_id} {link}"));
    }
    fn on_bus(&self, _: LinkKind, _: bool) {}
    fn hello(&self) -> Packet {
        Packet::new("unused", PacketBody::Ping(Ping { id: 0, time_us: 0 }))
    }
}

impl Recorder {
    async fn wait_for(&self, event: &str) {
        let seen = tokio::time::timeout(Duration::from_secs(5), async {
            while !self.events.lock().unwrap().iter().any(|e| e == event) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            seen.is_ok(),
            "no '{event}' in {:?}",
            self.events.lock().unwrap()
        );
    }
}

async fn node(id: &str, dir: &std::path::Path) -> (ShmTransport, Arc<Recorder>) {
    let recorder = Arc::new(Recorder::default());
    let transport = ShmTransport::builder()
        .dir(dir)
        .ring_capacity(64 << 10)
        .build();
    transport
        .start(TransportContext {
            node_id: id.into(),
            namespace: "t".into(),
            host_id: "test-host".into(),
            codec: Codec::new(1 << 20),
            handler: recorder.clone(),
            traffic: Arc::new(()),
        })
        .await
        .unwrap();
    (transport, recorder)
}

/// A fresh socket directory for one test.
fn test_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("phalanx-shm-test-{:x}", rand::random::<u32>()))
}

/// Nodes "a" and "b" in `dir`, once both see their shared-memory link up.
async fn linked_pair(
    dir: &std::path::Path,
) -> ((ShmTransport, Arc<Recorder>), (ShmTransport, Arc<Recorder>)) {
    let (a, a_seen) = node("a", dir).await;
    let (b, b_seen) = node("b", dir).await;
    a.learn_peer("b", &b.addresses(), PeerSource::Itself);
    a_seen.wait_for("up b shm").await;
    b_seen.wait_for("up a shm").await;
    ((a, a_seen), (b, b_seen))
}

#[tokio::test]
async fn an_unusable_directory_disables_shared_memory_without_failing() {
    let (transport, _) = node("a", std::path::Path::new("/proc/no-such-dir")).await;
    assert!(transport.addresses().is_empty());
    let ping = Packet::new("a", PacketBody::Ping(Ping { id: 1, time_us: 2 }));
    assert!(transport.send("b", &ping).await.is_err());
    transport.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupted_ring_closes_the_link_on_both_sides() {
    let dir = test_dir();
    let (a, a_seen) = node("a", &dir).await;
    let (b, b_seen) = node("b", &dir).await;
    // A wrong token is refused: the pair stays apart.
    let forged = b.addresses()[0].replace(&b.state.get().unwrap().token, "forged");
    a.learn_peer("b", &[forged], PeerSource::Itself);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.linked_nodes().is_empty());

    a.learn_peer("b", &b.addresses(), PeerSource::Itself);
    a_seen.wait_for("up b shm").await;
    b_seen.wait_for("up a shm").await;
    // A frame three times the ring's size streams through it.
    let big = crate::protocol::packet::Event {
        event: "big".into(),
        data: Bytes::from(vec![7u8; 200_000]),
        ..Default::default()
    };
    a.send("b", &Packet::new("a", PacketBody::Event(big)))
        .await
        .unwrap();
    b_seen.wait_for("packet a Event shm").await;
    let ping = Packet::new("a", PacketBody::Ping(Ping { id: 1, time_us: 2 }));
    a.send("b", &ping).await.unwrap();
    b_seen.wait_for("packet a Ping shm").await;

    let link = a.link("b").unwrap();
    link.outgoing.corrupt();
    b_seen.wait_for("down a shm").await;
    a_seen.wait_for("down b shm").await;
    assert!(a.send("b", &ping).await.is_err());
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A frame the ring has room for goes out from `try_send` at once; one it has no room for is
/// not cut in two but left to `send`, and the frames around it arrive whole and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_sent_without_waiting_goes_whole_or_not_at_all() {
    let dir = test_dir();
    let ((a, _), (b, b_seen)) = linked_pair(&dir).await;
    let ping = |id| Packet::new("a", PacketBody::Ping(Ping { id, time_us: 0 }));
    assert!(matches!(a.try_send("b", &ping(1)), Ok(TrySend::Sent(()))));
    let big = crate::protocol::packet::Event {
        event: "big".into(),
        data: Bytes::from(vec![7u8; 200_000]),
        ..Default::default()
    };
    let big = Packet::new("a", PacketBody::Event(big));
    assert!(matches!(a.try_send("b", &big), Ok(TrySend::WouldWait(()))));
    assert!(matches!(a.try_send("b", &ping(2)), Ok(TrySend::Sent(()))));
    a.send("b", &big).await.unwrap();
    b_seen.wait_for("packet a Event shm").await;
    assert!(matches!(a.try_send("b", &ping(3)), Ok(TrySend::Sent(()))));
    tokio::time::timeout(Duration::from_secs(5), async {
        while b_seen.pings.lock().unwrap().len() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("three pings");
    let ids: Vec<u64> = b_seen.pings.lock().unwrap().iter().map(|p| p.0).collect();
    assert_eq!(ids, [1, 2, 3]);
    let packets: Vec<String> = (b_seen.events.lock().unwrap().iter())
        .filter(|e| e.starts_with("packet a"))
        .cloned()
        .collect();
    assert_eq!(
        packets,
        ["Ping", "Ping", "Event", "Ping"].map(|kind| format!("packet a {kind} shm"))
    );
    assert!(a.try_send("nobody", &ping(4)).is_err());
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Callers reading the link themselves and the reader thread take turns without losing,
/// duplicating or reordering a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_waiters_and_the_reader_thread_share_the_link() {
    const FRAMES: u64 = 20_000;
    let dir = test_dir();
    let ((a, _), (b, b_seen)) = linked_pair(&dir).await;

    // The waiter is running before the first frame leaves.
    let (waiting, waiter_started) = tokio::sync::oneshot::channel();
    let (waiter, seen) = (b.clone(), b_seen.clone());
    let active = tokio::task::spawn_blocking(move || {
        let count = || seen.pings.lock().unwrap().len() as u64;
        let give_up = std::time::Instant::now() + Duration::from_secs(20);
        let _ = waiting.send(());
        while count() < FRAMES && std::time::Instant::now() < give_up {
            if let Ok(link) = waiter.link("a") {
                waiter.read_while_waiting(&link, &mut || count() == FRAMES);
            }
            std::thread::sleep(Duration::from_micros(30));
        }
    });
    waiter_started.await.unwrap();
    let sender = tokio::spawn(async move {
        for id in 0..FRAMES {
            let ping = Packet::new("a", PacketBody::Ping(Ping { id, time_us: 0 }));
            a.send("b", &ping).await.unwrap();
            if id % 64 == 0 {
                tokio::task::yield_now().await;
            }
        }
        a
    });
    active.await.unwrap();
    let a = sender.await.unwrap();
    let pings = b_seen.pings.lock().unwrap().clone();
    assert!(
        pings.iter().map(|(id, _)| *id).eq(0..FRAMES),
        "in order, once each: {} frames",
        pings.len()
    );
    let by_reader = pings.iter().filter(|(_, by_reader)| *by_reader).count();
    assert!(
        by_reader > 0 && by_reader < pings.len(),
        "both the reader thread ({by_reader}) and the waiter read frames"
    );
    assert_eq!(b.linked_nodes(), ["a"]);
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A panic while a frame is handled closes the link (both sides see it) instead of leaving
/// the link without a reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_reading_closes_the_link() {
    let dir = test_dir();
    let ((a, a_seen), (b, b_seen)) = linked_pair(&dir).await;
    let fatal = Ping {
        id: PANIC_ON_PING,
        time_us: 0,
    };
    a.send("b", &Packet::new("a", PacketBody::Ping(fatal)))
        .await
        .unwrap();
    b_seen.wait_for("down a shm").await;
    a_seen.wait_for("down b shm").await;
    assert!(b.linked_nodes().is_empty());
    a.stop().await;
    b.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn addresses_parse_with_colons_in_the_host_id() {
    let a = PeerAddress::parse("shm:abc:def:net:[4026531840]:0123abcd:/run/user/0/phalanx/n1.sock")
        .unwrap();
    assert_eq!(a.host_id, "abc:def:net:[4026531840]");
    assert_eq!(a.token, "0123abcd");
    assert_eq!(a.path, PathBuf::from("/run/user/0/phalanx/n1.sock"));
    assert!(PeerAddress::parse("127.0.0.1:7000").is_none());
}

//! Feeds arbitrary bytes as the body of an INFO (what a member sends first on every link): the
//! decoder must never panic, and whatever decodes is matched against an event name through every
//! pattern it announces — which must finish at once, whatever the patterns hold.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phalanx::protocol::codec::Codec;
use phalanx::protocol::packet::{PROTOCOL_VERSION, PacketBody, PacketKind};
use phalanx::registry::pattern_matches;

fuzz_target!(|data: &[u8]| {
    let mut payload = vec![PROTOCOL_VERSION, PacketKind::Info as u8];
    payload.extend_from_slice(data);
    let codec = Codec::new(1 << 20);
    if let Ok(packet) = codec.decode_payload(&payload)
        && let PacketBody::Info(info) = packet.body
    {
        let name = "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p";
        for event in info.services.iter().flat_map(|s| &s.events) {
            let _ = pattern_matches(&event.name, name);
        }
    }
});

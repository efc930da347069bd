//! What a packet travels in on a bus (NATS, Kafka): the server relays for anyone with rights on
//! the subjects (or topics), so every message carries proof of which member sent it.
//!
//! Each node starts a *session*: a random id and a fresh X25519 key pair. Its *introduction* —
//! node id, session, X25519 public key and certificate chain — rides on its messages, and the
//! cluster CA vouches for the chain, whose leaf names the node.
//!
//! ```text
//! SIGNED (broadcasts): 'P' 1 kind=1 | intro | seq u64 | frame blob32 | scheme u16 | sig blob16
//! SEALED (one node):   'P' 1 kind=2 | sender str16 | session u64 | seq u64 | flags u8
//!                      | [intro | scheme u16 | sig blob16 when flags & 1] | ciphertext + tag
//! intro:               sender str16 | session u64 | x25519 [32] | n u8 | (der blob16){n}
//! ```
//!
//! Broadcasts are signed with the node's certificate key over the subject and the message; in a
//! cluster with a shared secret their frame is also encrypted (kind 3, otherwise as kind 1)
//! under a key every member derives from the secret and the sender's session, so a client on
//! the server reads nothing — turn it off with `NatsTransportBuilder::encrypt_broadcasts`.
//! Messages to one node are sealed with ChaCha20-Poly1305 under a key only the two nodes can
//! compute (X25519 of their session keys, then HKDF with both ids and sessions, one key per
//! direction): they are authenticated, encrypted, and bound to the subject they were sent on.
//! Sequence numbers, checked against a 64-message window per sender and session, refuse
//! replays; a new session (a restart) means new keys, so nothing from an old one is accepted.
//!
//! A message that fails any check is dropped and counted; state is only ever kept for a member
//! whose introduction verified, and for at most [`MAX_PEERS`] of them.

use crate::identity::Credentials;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::pki_types::CertificateDer;
use smallvec::SmallVec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use x25519_dalek::{PublicKey, StaticSecret};

const MAGIC: u8 = b'P';
const VERSION: u8 = 1;
const KIND_SIGNED: u8 = 1;
const KIND_SEALED: u8 = 2;
const KIND_SIGNED_ENCRYPTED: u8 = 3;
const FLAG_INTRO: u8 = 1;
/// Members whose sessions a node keeps; introductions beyond are refused.
pub(crate) const MAX_PEERS: usize = 1024;
/// Subjects with a window of their own ([`Replays::PerSubject`]) kept per member; messages on
/// further subjects are refused.
pub(crate) const MAX_SUBJECTS_PER_PEER: usize = 1024;
/// Certificates in an introduction, at most.
const MAX_CHAIN: usize = 4;

/// Why a message was dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not an envelope of this version, or cut short.
    #[error("malformed envelope: {0}")]
    Malformed(&'static str),
    /// The introduction's certificate is not a member's, or does not name the sender.
    #[error("not a member: {0}")]
    NotMember(String),
    /// The signature or the seal does not check.
    #[error("forged: {0}")]
    Forged(&'static str),
    /// A sequence number already seen (or too old): a replay.
    #[error("replayed")]
    Replayed,
    /// A sealed message from a session this node was never introduced to.
    #[error("unknown session of '{0}'")]
    Unintroduced(String),
    /// Too many members already known.
    #[error("too many members known")]
    Full,
    /// One of our own messages, back from the bus (not an attack: dropped silently).
    #[error("our own message")]
    Own,
}

/// Which window judges a signed message's sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replays {
    /// One window per member across its broadcasts: for subjects every member reads whole.
    PerSender,
    /// One window per member and subject: for the partitions of a topic that members read in
    /// parts (Kafka consumer groups), where a member's numbers arrive in order per partition but
    /// interleaved across them. The subject names the partition, so the signature binds a
    /// message to it.
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    PerSubject,
}

/// A verified message: who sent it and the frame it carries.
#[derive(Debug)]
pub(crate) struct Opened {
    pub(crate) sender: Arc<str>,
    pub(crate) frame: Bytes,
}

/// Accepts each sequence number once, within a window of the last 64.
#[derive(Debug, Default)]
struct Window {
    max: u64,
    seen: u64,
}

impl Window {
    fn accept(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return false;
        }
        if seq > self.max {
            let shift = seq - self.max;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.max = seq;
            return true;
        }
        let age = self.max - seq;
        if age >= 64 || self.seen & (1 << age) != 0 {
            return false;
        }
        self.seen |= 1 << age;
        true
    }
}

/// A member this node was introduced to, in one of its sessions.
struct Peer {
    session: u64,
    leaf: CertificateDer<'static>,
    send: LessSafeKey,
    recv: LessSafeKey,
    send_seq: u64,
    broadcasts: Window,
    /// Windows of the subjects judged on their own ([`Replays::PerSubject`]).
    subjects: HashMap<Box<str>, Window>,
    sealed: Window,
    /// Our introduction went out in a sealed message to this session.
    introduced: bool,
}

/// This node's side of the envelopes.
pub(crate) struct Envelopes {
    me: Arc<str>,
    credentials: Credentials,
    session: u64,
    secret: StaticSecret,
    /// Our introduction, encoded once.
    intro: Bytes,
    /// The members' key for broadcasts, when they are encrypted.
    broadcast_key: Option<[u8; 32]>,
    encrypt_broadcasts: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    broadcast_seq: u64,
    peers: HashMap<Arc<str>, Peer>,
}

impl std::fmt::Debug for Envelopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envelopes")
            .field("me", &self.me)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Envelopes {
    /// This node's id.
    #[cfg(feature = "kafka")]
    pub(crate) fn me(&self) -> &str {
        &self.me
    }

    /// A new session for `me`, proven by `credentials`; broadcasts are encrypted when
    /// `encrypt_broadcasts` and the members share a secret.
    pub(crate) fn new(me: Arc<str>, credentials: Credentials, encrypt_broadcasts: bool) -> Self {
        let mut seed = [0u8; 32];
        let rng = ring::rand::SystemRandom::new();
        ring::rand::SecureRandom::fill(&rng, &mut seed).expect("the system's random source");
        let secret = StaticSecret::from(seed);
        // Later starts have larger sessions (milliseconds, then 16 random bits): an old
        // introduction replayed cannot bring back a session the member has left.
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        static LAST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let fresh = (millis << 16) | u64::from(rand::random::<u16>());
        let session = LAST
            .fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |last| Some(fresh.max(last + 1)),
            )
            .map_or(fresh, |last| fresh.max(last + 1));
        let mut intro = BytesMut::new();
        put_str16(&mut intro, &me);
        intro.put_u64(session);
        intro.put_slice(PublicKey::from(&secret).as_bytes());
        let chain = credentials.chain();
        intro.put_u8(chain.len().min(MAX_CHAIN) as u8);
        for cert in chain.iter().take(MAX_CHAIN) {
            put_blob16(&mut intro, cert.as_ref());
        }
        let broadcast_key = credentials.shared_key("nats-broadcast");
        Self {
            me,
            session,
            secret,
            intro: intro.freeze(),
            encrypt_broadcasts: encrypt_broadcasts && broadcast_key.is_some(),
            broadcast_key,
            credentials,
            state: Mutex::default(),
        }
    }

    /// Wraps a broadcast `frame` for `subject`: signed, readable by every member.
    pub(crate) fn sign(&self, subject: &str, frame: &[u8]) -> crate::Result<Bytes> {
        let seq = {
            let mut state = self.state.lock().expect("envelope lock");
            state.broadcast_seq += 1;
            state.broadcast_seq
        };
        let mut out = BytesMut::with_capacity(self.intro.len() + frame.len() + 128);
        let kind = if self.encrypt_broadcasts {
            KIND_SIGNED_ENCRYPTED
        } else {
            KIND_SIGNED
        };
        out.put_slice(&[MAGIC, VERSION, kind]);
        out.put_slice(&self.intro);
        out.put_u64(seq);
        match self.broadcast_sealer(&self.me, self.session) {
            Some(key) if self.encrypt_broadcasts => {
                let mut body = BytesMut::from(frame);
                let tag = key
                    .seal_in_place_separate_tag(
                        nonce(seq),
                        Aad::from(subject.as_bytes()),
                        &mut body,
                    )
                    .map_err(|_| crate::Error::new(crate::ErrorKind::Internal, "sealing failed"))?;
                body.extend_from_slice(tag.as_ref());
                put_blob32(&mut out, &body);
            }
            _ => put_blob32(&mut out, frame),
        }
        let (scheme, signature) = self.credentials.sign(&signed_part(subject, &out))?;
        out.put_u16(u16::from(scheme));
        put_blob16(&mut out, &signature);
        Ok(out.freeze())
    }

    /// Wraps `frame` for `to` on `subject`: sealed under our pair key, our introduction
    /// included until `to` has had it once. Fails if `to` has not introduced itself.
    pub(crate) fn seal(&self, to: &str, subject: &str, frame: &[u8]) -> crate::Result<Bytes> {
        let mut state = self.state.lock().expect("envelope lock");
        let peer = state.peers.get_mut(to).ok_or_else(|| {
            crate::Error::transport(format!(
                "node '{to}' has not introduced itself on the bus yet"
            ))
        })?;
        peer.send_seq += 1;
        let seq = peer.send_seq;
        let introduce = !peer.introduced;
        peer.introduced = true;
        let expected = frame.len() + 64 + if introduce { 1024 } else { 0 };
        crate::arena::build(expected, |out| {
            out.put_slice(&[MAGIC, VERSION, KIND_SEALED]);
            put_str16(out, &self.me);
            out.put_u64(self.session);
            out.put_u64(seq);
            out.put_u8(if introduce { FLAG_INTRO } else { 0 });
            if introduce {
                out.put_slice(&self.intro);
                let (scheme, signature) =
                    self.credentials.sign(&signed_part(subject, &self.intro))?;
                out.put_u16(u16::from(scheme));
                put_blob16(out, &signature);
            }
            let aad = signed_part(subject, out);
            let header = out.len();
            out.put_slice(frame);
            let tag = peer
                .send
                .seal_in_place_separate_tag(nonce(seq), Aad::from(&aad), &mut out[header..])
                .map_err(|_| crate::Error::new(crate::ErrorKind::Internal, "sealing failed"))?;
            out.put_slice(tag.as_ref());
            Ok(())
        })
    }

    /// Checks and opens a message received on `subject`, judging a signed message's sequence
    /// number in the window `replays` says.
    pub(crate) fn open(
        &self,
        subject: &str,
        message: Bytes,
        replays: Replays,
    ) -> Result<Opened, Refused> {
        let mut r = Reader(message.clone());
        if r.u8()? != MAGIC || r.u8()? != VERSION {
            return Err(Refused::Malformed("not a Phalanx envelope of version 1"));
        }
        match r.u8()? {
            KIND_SIGNED => self.open_signed(subject, &message, r, false, replays),
            KIND_SIGNED_ENCRYPTED => self.open_signed(subject, &message, r, true, replays),
            KIND_SEALED => self.open_sealed(subject, message, r),
            _ => Err(Refused::Malformed("unknown kind")),
        }
    }

    fn open_signed(
        &self,
        subject: &str,
        message: &Bytes,
        mut r: Reader,
        encrypted: bool,
        replays: Replays,
    ) -> Result<Opened, Refused> {
        let intro = Intro::read(&mut r)?;
        if intro.sender == self.me {
            return Err(Refused::Own);
        }
        let seq = r.u64()?;
        let frame = r.blob32()?;
        let signed_len = message.len() - r.0.len();
        let scheme = rustls::SignatureScheme::from(r.u16()?);
        let signature = r.blob16()?;
        self.check_intro(&intro)?;
        Credentials::verify_signed(
            &intro.chain[0],
            &signed_part(subject, &message[..signed_len]),
            scheme,
            &signature,
        )
        .map_err(|_| Refused::Forged("bad broadcast signature"))?;
        let mut state = self.state.lock().expect("envelope lock");
        let peer = self.admit(&mut state, &intro)?;
        let window = match replays {
            Replays::PerSender => &mut peer.broadcasts,
            Replays::PerSubject => {
                if !peer.subjects.contains_key(subject)
                    && peer.subjects.len() >= MAX_SUBJECTS_PER_PEER
                {
                    return Err(Refused::Full);
                }
                peer.subjects.entry(subject.into()).or_default()
            }
        };
        if !window.accept(seq) {
            return Err(Refused::Replayed);
        }
        drop(state);
        let frame =
            if encrypted {
                let key = self.broadcast_sealer(&intro.sender, intro.session).ok_or(
                    Refused::Malformed("an encrypted broadcast, and no key to read it"),
                )?;
                let mut body = BytesMut::from(&frame[..]);
                let len = key
                    .open_in_place(nonce(seq), Aad::from(subject.as_bytes()), &mut body)
                    .map_err(|_| Refused::Forged("encrypted broadcast does not open"))?
                    .len();
                body.truncate(len);
                body.freeze()
            } else {
                frame
            };
        Ok(Opened {
            sender: intro.sender,
            frame,
        })
    }

    fn open_sealed(&self, subject: &str, message: Bytes, mut r: Reader) -> Result<Opened, Refused> {
        // Looked up by a slice of the message: the sender's id is taken from the known peer, no
        // string made per message.
        let sender_bytes = r.blob16()?;
        let sender = std::str::from_utf8(&sender_bytes).map_err(|_| Refused::Malformed("name"))?;
        let session = r.u64()?;
        let seq = r.u64()?;
        let flags = r.u8()?;
        let mut state = self.state.lock().expect("envelope lock");
        if flags & FLAG_INTRO != 0 {
            let start = message.len() - r.0.len();
            let intro = Intro::read(&mut r)?;
            let intro_bytes = &message[start..message.len() - r.0.len()];
            let scheme = rustls::SignatureScheme::from(r.u16()?);
            let signature = r.blob16()?;
            if &*intro.sender != sender || intro.session != session {
                return Err(Refused::Forged("introduction of another node"));
            }
            drop(state);
            self.check_intro(&intro)?;
            Credentials::verify_signed(
                &intro.chain[0],
                &signed_part(subject, intro_bytes),
                scheme,
                &signature,
            )
            .map_err(|_| Refused::Forged("bad introduction signature"))?;
            state = self.state.lock().expect("envelope lock");
            self.admit(&mut state, &intro)?;
        }
        let header_len = message.len() - r.0.len();
        let sender = state
            .peers
            .get_key_value(sender)
            .filter(|(_, p)| p.session == session)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| Refused::Unintroduced(sender.to_string()))?;
        let peer = state.peers.get_mut(&sender).expect("found above");
        let aad = signed_part(subject, &message[..header_len]);
        drop((r, sender_bytes));
        let open = |sealed: &mut [u8]| {
            peer.recv
                .open_in_place(nonce(seq), Aad::from(&aad), sealed)
                .map(|plain| plain.len())
                .map_err(|_| Refused::Forged("seal does not open"))
        };
        let frame = match message.try_into_mut() {
            // Opened where it arrived when nothing else holds the message (a Kafka record's
            // own copy)...
            Ok(mut body) => {
                body.advance(header_len);
                let plain_len = open(&mut body[..])?;
                body.truncate(plain_len);
                body.freeze()
            }
            // ... else in a copy carved from the thread's arena (a NATS message is a slice of
            // the client's read buffer).
            Err(shared) => crate::arena::build(shared.len() - header_len, |body| {
                body.put_slice(&shared[header_len..]);
                let plain_len = open(&mut body[..])?;
                body.truncate(plain_len);
                Ok(())
            })?,
        };
        if !peer.sealed.accept(seq) {
            return Err(Refused::Replayed);
        }
        Ok(Opened { sender, frame })
    }

    /// Checks that an introduction's chain is a member's and names its sender (the leaf already
    /// verified for this sender's session is not checked again).
    fn check_intro(&self, intro: &Intro) -> Result<(), Refused> {
        if intro.sender == self.me {
            return Err(Refused::Forged("a message in our own name"));
        }
        let known = {
            let state = self.state.lock().expect("envelope lock");
            state
                .peers
                .get(&intro.sender)
                .is_some_and(|p| p.session == intro.session && p.leaf == intro.chain[0])
        };
        if known {
            return Ok(());
        }
        self.credentials
            .verify_member(&intro.chain, &intro.sender)
            .map_err(|e| Refused::NotMember(e.message().to_owned()))
    }

    /// The peer state of a verified introduction: kept if the session is known, replaced when
    /// the member restarted (a larger session), created (within [`MAX_PEERS`]) otherwise; an
    /// older session than the known one is a replay.
    fn admit<'s>(&self, state: &'s mut State, intro: &Intro) -> Result<&'s mut Peer, Refused> {
        let known = state.peers.get(&intro.sender).map(|p| p.session);
        if known.is_some_and(|session| intro.session < session) {
            return Err(Refused::Replayed);
        }
        if known != Some(intro.session) {
            if !state.peers.contains_key(&intro.sender) && state.peers.len() >= MAX_PEERS {
                return Err(Refused::Full);
            }
            let peer = self.pair_with(intro)?;
            state.peers.insert(intro.sender.clone(), peer);
        }
        Ok(state.peers.get_mut(&intro.sender).expect("inserted above"))
    }

    /// The keys shared with a member's session: X25519, then one HKDF key per direction.
    fn pair_with(&self, intro: &Intro) -> Result<Peer, Refused> {
        let shared = self.secret.diffie_hellman(&PublicKey::from(intro.public));
        if !shared.was_contributory() {
            return Err(Refused::Forged("a low-order key"));
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"phalanx/nats-seal/v1");
        let prk = salt.extract(shared.as_bytes());
        let key = |from: &str, from_session: u64, to: &str, to_session: u64| {
            let info = format!("{from}\0{from_session}\0{to}\0{to_session}");
            let info = [info.as_bytes()];
            let okm = prk
                .expand(&info, &aead::CHACHA20_POLY1305)
                .map_err(|_| Refused::Malformed("key derivation"))?;
            Ok::<_, Refused>(LessSafeKey::new(UnboundKey::from(okm)))
        };
        Ok(Peer {
            session: intro.session,
            leaf: intro.chain[0].clone(),
            send: key(&self.me, self.session, &intro.sender, intro.session)?,
            recv: key(&intro.sender, intro.session, &self.me, self.session)?,
            send_seq: 0,
            broadcasts: Window::default(),
            subjects: HashMap::new(),
            sealed: Window::default(),
            introduced: false,
        })
    }

    /// The key of `sender`'s broadcasts in `session` (unique per sender session, so sequence
    /// numbers are unique nonces under it).
    fn broadcast_sealer(&self, sender: &str, session: u64) -> Option<LessSafeKey> {
        let base = self.broadcast_key.as_ref()?;
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"phalanx/nats-broadcast/v1");
        let info = format!("{sender}\0{session}");
        let info = [info.as_bytes()];
        let prk = salt.extract(base);
        let okm = prk.expand(&info, &aead::CHACHA20_POLY1305).ok()?;
        Some(LessSafeKey::new(UnboundKey::from(okm)))
    }

    /// Forgets a member (it left, or was forgotten by the broker).
    pub(crate) fn forget(&self, node_id: &str) {
        self.state
            .lock()
            .expect("envelope lock")
            .peers
            .remove(node_id);
    }
}

/// A decoded introduction (not yet verified).
struct Intro {
    sender: Arc<str>,
    session: u64,
    public: [u8; 32],
    chain: Vec<CertificateDer<'static>>,
}

impl Intro {
    fn read(r: &mut Reader) -> Result<Self, Refused> {
        let sender: Arc<str> = r.str16()?.into();
        let session = r.u64()?;
        let public: [u8; 32] = r
            .take(32)?
            .as_ref()
            .try_into()
            .map_err(|_| Refused::Malformed("key"))?;
        let n = usize::from(r.u8()?);
        if n == 0 || n > MAX_CHAIN {
            return Err(Refused::Malformed("certificate count"));
        }
        let chain = (0..n)
            .map(|_| r.blob16().map(|der| CertificateDer::from(der.to_vec())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            sender,
            session,
            public,
            chain,
        })
    }
}

/// What a signature or seal covers: a context, the subject, then the message bytes.
fn signed_part(subject: &str, message: &[u8]) -> SmallVec<[u8; 256]> {
    let mut out = SmallVec::with_capacity(24 + subject.len() + message.len());
    out.extend_from_slice(b"phalanx-nats/1\n");
    out.extend_from_slice(subject.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(message);
    out
}

fn nonce(seq: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

fn put_str16(out: &mut BytesMut, s: &str) {
    put_blob16(out, s.as_bytes());
}

fn put_blob16(out: &mut BytesMut, b: &[u8]) {
    out.put_u16(b.len().min(usize::from(u16::MAX)) as u16);
    out.put_slice(&b[..b.len().min(usize::from(u16::MAX))]);
}

fn put_blob32(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(b.len() as u32);
    out.put_slice(b);
}

/// Bounds-checked reads; every shortfall is [`Refused::Malformed`].
struct Reader(Bytes);

impl Reader {
    fn take(&mut self, n: usize) -> Result<Bytes, Refused> {
        if self.0.len() < n {
            return Err(Refused::Malformed("cut short"));
        }
        Ok(self.0.split_to(n))
    }
    fn u8(&mut self) -> Result<u8, Refused> {
        Ok(self.take(1)?.get_u8())
    }
    fn u16(&mut self) -> Result<u16, Refused> {
        Ok(self.take(2)?.get_u16())
    }
    fn u64(&mut self) -> Result<u64, Refused> {
        Ok(self.take(8)?.get_u64())
    }
    fn blob16(&mut self) -> Result<Bytes, Refused> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
    fn blob32(&mut self) -> Result<Bytes, Refused> {
        let n = self.take(4)?.get_u32() as usize;
        self.take(n)
    }
    fn str16(&mut self) -> Result<String, Refused> {
        String::from_utf8(self.blob16()?.to_vec()).map_err(|_| Refused::Malformed("name"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClusterCa;

    const SECRET: &str = "envelope-test-secret-0123456789abcdef";
    const SUBJECT: &str = "PHX.t.node.b";

    fn node(id: &str, secret: &str) -> Envelopes {
        let credentials = ClusterCa::secret(secret).credentials(id).unwrap();
        Envelopes::new(id.into(), credentials, true)
    }

    /// `a` and `b`, each introduced to the other by a broadcast.
    fn pair() -> (Envelopes, Envelopes) {
        let (a, b) = (node("a", SECRET), node("b", SECRET));
        b.open(
            "PHX.t.bcast",
            a.sign("PHX.t.bcast", b"hello from a").unwrap(),
            Replays::PerSender,
        )
        .unwrap();
        a.open(
            "PHX.t.bcast",
            b.sign("PHX.t.bcast", b"hello from b").unwrap(),
            Replays::PerSender,
        )
        .unwrap();
        (a, b)
    }

    #[test]
    fn broadcasts_are_signed_and_sealed_messages_open_only_for_their_pair() {
        let (a, b) = pair();
        let sealed = a.seal("b", SUBJECT, b"request").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"request"), "encrypted");
        let opened = b.open(SUBJECT, sealed, Replays::PerSender).unwrap();
        assert_eq!((&*opened.sender, &opened.frame[..]), ("a", &b"request"[..]));
        let reply = b.seal("a", "PHX.t.node.a", b"response").unwrap();
        assert_eq!(
            &a.open("PHX.t.node.a", reply, Replays::PerSender)
                .unwrap()
                .frame[..],
            b"response"
        );
    }

    #[test]
    fn replays_tampering_and_other_subjects_are_refused() {
        let (a, b) = pair();
        let sealed = a.seal("b", SUBJECT, b"once").unwrap();
        b.open(SUBJECT, sealed.clone(), Replays::PerSender).unwrap();
        assert_eq!(
            b.open(SUBJECT, sealed.clone(), Replays::PerSender)
                .unwrap_err(),
            Refused::Replayed
        );
        let later = a.seal("b", SUBJECT, b"twice").unwrap();
        assert!(matches!(
            b.open("PHX.t.node.c", later.clone(), Replays::PerSender),
            Err(Refused::Forged(_))
        ));
        let mut flipped = later.to_vec();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            b.open(SUBJECT, flipped.into(), Replays::PerSender),
            Err(Refused::Forged(_))
        ));
        let broadcast = a.sign("PHX.t.bcast", b"beat").unwrap();
        b.open("PHX.t.bcast", broadcast.clone(), Replays::PerSender)
            .unwrap();
        assert_eq!(
            b.open("PHX.t.bcast", broadcast, Replays::PerSender)
                .unwrap_err(),
            Refused::Replayed
        );
    }

    #[test]
    fn a_non_member_cannot_speak_and_a_member_cannot_speak_for_another() {
        let (_, b) = pair();
        let outsider = node("a", "some-other-cluster-secret-0123456789");
        let forged = outsider.sign("PHX.t.bcast", b"i am a").unwrap();
        assert!(matches!(
            b.open("PHX.t.bcast", forged, Replays::PerSender),
            Err(Refused::NotMember(_))
        ));
        // A member ("m") with a real certificate, sending its own introduction under a's name.
        let m = node("m", SECRET);
        let mut lie = m.sign("PHX.t.bcast", b"i am a").unwrap().to_vec();
        lie[5] = b'a'; // sender "m" -> "a" (same length): the certificate still names "m"
        assert!(matches!(
            b.open("PHX.t.bcast", lie.into(), Replays::PerSender),
            Err(Refused::NotMember(_))
        ));
    }

    #[test]
    fn a_restarted_member_gets_new_keys_and_old_messages_stay_shut() {
        let (a, b) = pair();
        let old = a.seal("b", SUBJECT, b"old session").unwrap();
        let a2 = node("a", SECRET);
        b.open(
            "PHX.t.bcast",
            a2.sign("PHX.t.bcast", b"back").unwrap(),
            Replays::PerSender,
        )
        .unwrap();
        // Its introduction is older than the session b now knows: a replay.
        assert_eq!(
            b.open(SUBJECT, old, Replays::PerSender).unwrap_err(),
            Refused::Replayed
        );
    }

    #[test]
    fn broadcasts_are_unreadable_without_the_secret_and_readable_by_members() {
        let (a, b) = pair();
        let broadcast = a.sign("PHX.t.bcast", b"the INFO of a").unwrap();
        assert!(
            !broadcast.windows(8).any(|w| w == b"INFO of "),
            "encrypted on the wire"
        );
        assert_eq!(
            &b.open("PHX.t.bcast", broadcast, Replays::PerSender)
                .unwrap()
                .frame[..],
            b"the INFO of a"
        );
        let plain = Envelopes::new(
            "p".into(),
            ClusterCa::secret(SECRET).credentials("p").unwrap(),
            false,
        );
        let readable = plain.sign("PHX.t.bcast", b"the INFO of p").unwrap();
        assert!(readable.windows(8).any(|w| w == b"INFO of "), "signed only");
        assert_eq!(
            &b.open("PHX.t.bcast", readable, Replays::PerSender)
                .unwrap()
                .frame[..],
            b"the INFO of p"
        );
    }

    #[test]
    fn the_window_takes_each_number_once() {
        let mut w = Window::default();
        assert!(w.accept(2) && w.accept(1) && !w.accept(1) && !w.accept(2));
        assert!(w.accept(100) && !w.accept(36) && w.accept(37) && !w.accept(0));
    }

    #[test]
    fn per_subject_windows_take_interleaved_partitions_and_refuse_replays_on_each() {
        let (a, b) = pair();
        // 200 messages over two partitions; b reads all of partition 1 before partition 0.
        let sent: Vec<(String, Bytes)> = (0..200)
            .map(|n| {
                let subject = format!("phx.t.event.g.e:{}", n % 2);
                let signed = a.sign(&subject, b"event").unwrap();
                (subject, signed)
            })
            .collect();
        for (subject, signed) in sent.iter().filter(|(s, _)| s.ends_with(":1")) {
            b.open(subject, signed.clone(), Replays::PerSubject)
                .unwrap();
        }
        for (subject, signed) in sent.iter().filter(|(s, _)| s.ends_with(":0")) {
            b.open(subject, signed.clone(), Replays::PerSubject)
                .unwrap();
        }
        let (subject, signed) = &sent[7];
        assert_eq!(
            b.open(subject, signed.clone(), Replays::PerSubject)
                .unwrap_err(),
            Refused::Replayed
        );
        // Moved to the other partition, the signature no longer holds.
        assert!(matches!(
            b.open("phx.t.event.g.e:0", signed.clone(), Replays::PerSubject),
            Err(Refused::Forged(_))
        ));
    }
}

//! A node's own, signed word on where it can be reached: passed on by gossip, so that a member
//! who relays it cannot change it and a member cannot invent one for a node whose certificate
//! it does not hold.
//!
//! ```text
//! node str16 | namespace str16 | n u8 | (address str16){n} | m u8 | (der blob16){m} | scheme u16 | sig blob16
//! ```
//!
//! The signature (the node's certificate key) covers everything before `scheme`; the chain must
//! lead to the cluster CA and its leaf must name the node.

use crate::identity::Credentials;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use rustls::pki_types::CertificateDer;

/// Addresses in a record, at most.
const MAX_ADDRESSES: usize = 16;
/// Certificates in a record, at most.
const MAX_CHAIN: usize = 4;

/// Signs `addresses` as `node_id`'s in `namespace`.
pub(crate) fn sign(
    credentials: &Credentials,
    node_id: &str,
    namespace: &str,
    addresses: &[String],
) -> crate::Result<Bytes> {
    let mut out = BytesMut::new();
    put_str16(&mut out, node_id);
    put_str16(&mut out, namespace);
    let addresses = &addresses[..addresses.len().min(MAX_ADDRESSES)];
    out.put_u8(addresses.len() as u8);
    for address in addresses {
        put_str16(&mut out, address);
    }
    let chain = &credentials.chain()[..credentials.chain().len().min(MAX_CHAIN)];
    out.put_u8(chain.len() as u8);
    for cert in chain {
        put_blob16(&mut out, cert.as_ref());
    }
    let (scheme, signature) = credentials.sign(&signed_part(&out))?;
    out.put_u16(u16::from(scheme));
    put_blob16(&mut out, &signature);
    Ok(out.freeze())
}

/// The addresses `record` vouches for, if it is `node_id`'s own in `namespace`, signed with a
/// member certificate that names it.
pub(crate) fn verify(
    credentials: &Credentials,
    record: &[u8],
    node_id: &str,
    namespace: &str,
) -> Result<Vec<String>, String> {
    let mut r = record;
    let named = str16(&mut r)?;
    let ns = str16(&mut r)?;
    if named != node_id || ns != namespace {
        return Err(format!(
            "a record of '{named}' in '{ns}', not of '{node_id}'"
        ));
    }
    let n = usize::from(u8(&mut r)?);
    if n > MAX_ADDRESSES {
        return Err("too many addresses".into());
    }
    let addresses = (0..n)
        .map(|_| str16(&mut r))
        .collect::<Result<Vec<_>, _>>()?;
    let m = usize::from(u8(&mut r)?);
    if m == 0 || m > MAX_CHAIN {
        return Err("bad certificate count".into());
    }
    let chain = (0..m)
        .map(|_| blob16(&mut r).map(|der| CertificateDer::from(der.to_vec())))
        .collect::<Result<Vec<_>, _>>()?;
    let signed_len = record.len() - r.len();
    let scheme = rustls::SignatureScheme::from(u16_(&mut r)?);
    let signature = blob16(&mut r)?;
    credentials
        .verify_member(&chain, node_id)
        .map_err(|e| e.message().to_owned())?;
    Credentials::verify_signed(
        &chain[0],
        &signed_part(&record[..signed_len]),
        scheme,
        signature,
    )
    .map_err(|e| e.message().to_owned())?;
    Ok(addresses)
}

fn signed_part(body: &[u8]) -> Vec<u8> {
    let mut out = b"phalanx-addresses/1\n".to_vec();
    out.extend_from_slice(body);
    out
}

fn put_str16(out: &mut BytesMut, s: &str) {
    put_blob16(out, s.as_bytes());
}

fn put_blob16(out: &mut BytesMut, b: &[u8]) {
    let b = &b[..b.len().min(usize::from(u16::MAX))];
    out.put_u16(b.len() as u16);
    out.put_slice(b);
}

fn u8(r: &mut &[u8]) -> Result<u8, String> {
    if r.is_empty() {
        return Err("cut short".into());
    }
    Ok(r.get_u8())
}

fn u16_(r: &mut &[u8]) -> Result<u16, String> {
    if r.len() < 2 {
        return Err("cut short".into());
    }
    Ok(r.get_u16())
}

fn blob16<'a>(r: &mut &'a [u8]) -> Result<&'a [u8], String> {
    let n = usize::from(u16_(r)?);
    if r.len() < n {
        return Err("cut short".into());
    }
    let (blob, rest) = r.split_at(n);
    *r = rest;
    Ok(blob)
}

fn str16(r: &mut &[u8]) -> Result<String, String> {
    String::from_utf8(blob16(r)?.to_vec()).map_err(|_| "a name that is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ClusterCa;

    const SECRET: &str = "address-record-secret-0123456789abcdef";

    #[test]
    fn a_record_vouches_only_for_its_own_node_and_cannot_be_altered() {
        let b = ClusterCa::secret(SECRET).credentials("b").unwrap();
        let a = ClusterCa::secret(SECRET).credentials("a").unwrap();
        let addresses = vec!["10.0.0.2:7000".to_owned()];
        let record = sign(&b, "b", "ns", &addresses).unwrap();
        assert_eq!(verify(&a, &record, "b", "ns").unwrap(), addresses);
        assert!(verify(&a, &record, "c", "ns").is_err(), "another node's");
        assert!(
            verify(&a, &record, "b", "other").is_err(),
            "another namespace's"
        );
        let mut altered = record.to_vec();
        let at = altered.windows(4).position(|w| w == b"10.0").unwrap();
        altered[at + 3] = b'9';
        assert!(
            verify(&a, &altered, "b", "ns").is_err(),
            "an address changed in transit"
        );
        // A member signing a record for "c" with its own certificate (which names "b").
        let lie = sign(&b, "c", "ns", &addresses).unwrap();
        assert!(verify(&a, &lie, "c", "ns").is_err());
        let outsider = ClusterCa::secret("another-cluster-secret-0123456789ab")
            .credentials("b")
            .unwrap();
        let forged = sign(&outsider, "b", "ns", &addresses).unwrap();
        assert!(verify(&a, &forged, "b", "ns").is_err(), "not a member");
        assert!(verify(&a, &record[..record.len() / 2], "b", "ns").is_err());
    }
}

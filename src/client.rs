//! Who the client is: the address a service throttles by and logs.
//!
//! A service takes it from the connection, unless the caller is a Capsule
//! service that vouches for the client it forwards — the gateway sends
//! the client's address in [`ADDRESS_HEADER`] with [`PROOF_HEADER`], a
//! value derived from `CAPSULE_INTERNAL_SECRET` that grants nothing else,
//! or calls with a client certificate where mTLS is required. The header
//! from anyone else is ignored. The gateway itself believes
//! `X-Forwarded-For` only from the proxies it is told to trust.

use std::net::IpAddr;

pub use ipnet::IpNet;
use sha2::Digest;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The client's address, as a Capsule service forwarding the call saw it.
pub const ADDRESS_HEADER: &str = "x-capsule-client-address";

/// Proof that [`ADDRESS_HEADER`] comes from a Capsule service.
pub const PROOF_HEADER: &str = "x-capsule-client-address-proof";

/// The client address of a call, in its extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

/// The proof a Capsule service sends with a client address: a digest of
/// the internal secret for this one purpose, so it cannot stand in for
/// the secret.
pub fn proof(internal_secret: &str) -> String {
    let digest = sha2::Sha256::digest(format!("capsule client address\0{internal_secret}").as_bytes());
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The address at the other end of the connection a request came on.
pub fn peer<B>(request: &http::Request<B>) -> Option<IpAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .map(TlsConnectInfo::get_ref)
        })
        .and_then(TcpConnectInfo::remote_addr)
        .map(|addr| addr.ip())
}

/// The client of a request to a service: the address a Capsule caller
/// vouches for (`expected_proof` matched, or a client certificate
/// presented), else the connection's peer.
pub fn resolve<B>(request: &http::Request<B>, expected_proof: Option<&str>) -> Option<IpAddr> {
    let headers = request.headers();
    let proven = expected_proof.is_some_and(|expected| {
        headers
            .get(PROOF_HEADER)
            .is_some_and(|presented| constant_time_eq(presented.as_bytes(), expected.as_bytes()))
    });
    let certified = request
        .extensions()
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .is_some_and(|certs| !certs.is_empty());
    let vouched = (proven || certified)
        .then(|| headers.get(ADDRESS_HEADER)?.to_str().ok()?.trim().parse().ok())
        .flatten();
    vouched.or_else(|| peer(request))
}

/// The client behind `peer`: when `peer` is a trusted proxy, the
/// right-most address in `X-Forwarded-For` that is not one (the one the
/// trusted chain received the request from); otherwise `peer` itself.
pub fn forwarded(peer: IpAddr, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let chain: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map_while(|entry| entry.trim().parse().ok())
        .collect();
    chain
        .iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .or_else(|| chain.first())
        .copied()
        .unwrap_or(peer)
}

/// Puts `client` and the proof on a call to another Capsule service,
/// removing whatever the caller sent in their place.
pub fn vouch(headers: &mut http::HeaderMap, client: Option<IpAddr>, proof: Option<&str>) {
    headers.remove(ADDRESS_HEADER);
    headers.remove(PROOF_HEADER);
    if let (Some(client), Some(proof)) = (client, proof)
        && let (Ok(address), Ok(proof)) = (client.to_string().parse(), proof.parse())
    {
        headers.insert(ADDRESS_HEADER, address);
        headers.insert(PROOF_HEADER, proof);
    }
}

/// The client address of a call a service is handling.
pub fn ip_of<T>(request: &tonic::Request<T>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<ClientAddress>()
        .map(|client| client.0)
        .or_else(|| request.remote_addr().map(|addr| addr.ip()))
}

/// [`ip_of`] as text (empty when unknown).
pub fn address_of<T>(request: &tonic::Request<T>) -> String {
    ip_of(request).map(|ip| ip.to_string()).unwrap_or_default()
}

/// Trusted proxies from a comma-separated list of CIDRs or addresses.
pub fn parse_networks(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{entry:?} is not a CIDR (10.0.0.0/8) or an address"))
        })
        .collect()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(forwarded: &[&str]) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        for value in forwarded {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = parse_networks("10.0.0.0/8, 192.168.1.1").unwrap();
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        let proxy: IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: IpAddr = "198.51.100.9".parse().unwrap();
        // A stranger's own header is ignored.
        assert_eq!(forwarded(stranger, &headers(&["1.2.3.4"]), &trusted), stranger);
        // Through a trusted proxy: the client it saw, not what the client wrote.
        assert_eq!(forwarded(proxy, &headers(&["1.2.3.4, 203.0.113.7"]), &trusted), client);
        assert_eq!(
            forwarded(proxy, &headers(&["1.2.3.4", "203.0.113.7, 192.168.1.1"]), &trusted),
            client
        );
        // A trusted proxy that forwards nothing is the client.
        assert_eq!(forwarded(proxy, &headers(&[]), &trusted), proxy);
        assert!(parse_networks("10.0.0.0/33").unwrap_err().contains("10.0.0.0/33"));
    }

    #[test]
    fn the_address_header_counts_only_with_the_proof() {
        let expected = proof("secret");
        let request = |with: Option<&str>| {
            let mut request = http::Request::new(());
            request
                .headers_mut()
                .insert(ADDRESS_HEADER, "203.0.113.7".parse().unwrap());
            if let Some(proof) = with {
                request.headers_mut().insert(PROOF_HEADER, proof.parse().unwrap());
            }
            request
        };
        let client: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(resolve(&request(Some(&expected)), Some(&expected)), Some(client));
        assert_eq!(resolve(&request(Some(&proof("other"))), Some(&expected)), None);
        assert_eq!(resolve(&request(None), Some(&expected)), None);
        assert_eq!(resolve(&request(Some(&expected)), None), None);
        assert_ne!(proof("secret"), "secret");
    }
}

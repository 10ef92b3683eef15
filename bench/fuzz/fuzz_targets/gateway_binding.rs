//! The gateway's REST binding: any verb, path, query string and body is
//! matched against every annotated route and bound into a request message
//! (and back to JSON), without a panic. Input: one byte for the verb, then
//! path, query and body separated by NUL bytes.

#![no_main]

use std::sync::OnceLock;

use capsule_gateway::transcode::{self, Routes};
use libfuzzer_sys::fuzz_target;

fn routes() -> &'static Routes {
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    ROUTES
        .get_or_init(|| Routes::from_descriptor_set(capsule::proto::FILE_DESCRIPTOR_SET).expect("the descriptors load"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&verb, rest)) = data.split_first() else {
        return;
    };
    let verb = [
        http::Method::GET,
        http::Method::POST,
        http::Method::PATCH,
        http::Method::DELETE,
    ][usize::from(verb) % 4]
        .clone();
    let mut parts = rest.splitn(3, |&b| b == 0);
    let path = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let query = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let Ok((route, bound)) = routes().find(&verb, &path) else {
        return;
    };
    let query: Vec<(String, String)> = form_pairs(query);
    if let Ok(message) = transcode::build_request(route, &bound, &query, body, "application/json") {
        let _ = transcode::to_json(&message);
    }
});

/// `a=1&b=2`, percent-decoded as a browser would send it.
fn form_pairs(query: &[u8]) -> Vec<(String, String)> {
    query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let mut kv = pair.splitn(2, |&b| b == b'=');
            let key = String::from_utf8_lossy(kv.next().unwrap_or_default()).into_owned();
            let value = String::from_utf8_lossy(kv.next().unwrap_or_default()).into_owned();
            (key, value)
        })
        .collect()
}

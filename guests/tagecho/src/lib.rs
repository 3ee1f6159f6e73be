//! # guest-tagecho: an echo server that says which variant it is
//!
//! It exists for the live-reload tests and benchmark (`bench/reload.sh`):
//! two configurations of the same component, told apart by their `TAG`,
//! are swapped under load, and every new connection shows which one
//! accepted it.
//!
//! - On connection-made it writes `tag=<TAG>\n`, where `TAG` is the
//!   environment variable its plugin grants (`env = { TAG = "A" }` in
//!   `plugins.toml`), or `tag=untagged\n` when there is none.
//! - Then, like guest-echo's `Echo`, it writes back every byte it receives,
//!   unchanged and as soon as it arrives.
//!
//! It keeps no state beyond the connection, so it works per connection and
//! on `instance = "shared"` plugins (where the SDK dispatches the host's
//! batched reads to each connection's protocol in turn).

use twill_guest::{Factory, Protocol, Transport, export};

/// The tag this instance was configured with: `TAG`, or `untagged`.
fn tag() -> String {
    std::env::var("TAG").unwrap_or_else(|_| "untagged".to_string())
}

/// The server: announce the tag, then echo every byte back.
#[derive(Default)]
pub struct TagEcho;

impl Protocol for TagEcho {
    fn connection_made(&mut self, transport: &Transport) {
        transport.write(format!("tag={}\n", tag()).as_bytes());
    }

    fn data_received(&mut self, transport: &Transport, data: &[u8]) {
        transport.write(data);
    }
}

export!(server: Factory<TagEcho>);

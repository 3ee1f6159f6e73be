//! The benchmark's echo with a `TimeoutMixin`: every connection arms a
//! 30 s [`Timeout`] when it is made and resets it on every read, as a
//! protocol that drops idle clients does. `bench/time.py` measures what
//! that costs against the plain echo.

use std::time::Duration;

use twill_guest::reactor::Timeout;
use twill_guest::{Factory, Protocol, Transport, export};

/// Echo, keeping an idle timeout.
#[derive(Default)]
pub struct TimeoutEcho {
    idle: Option<Timeout>,
}

impl Protocol for TimeoutEcho {
    fn connection_made(&mut self, transport: &Transport) {
        let idle = Timeout::new(transport);
        idle.set_timeout(Some(Duration::from_secs(30)));
        self.idle = Some(idle);
    }

    fn data_received(&mut self, transport: &Transport, data: &[u8]) {
        if let Some(idle) = &self.idle {
            idle.reset_timeout();
        }
        transport.write(data);
    }
}

export!(server: Factory<TimeoutEcho>);

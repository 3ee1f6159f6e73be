//! The host side of the `reactor` interface: `seconds`, `call-later` and
//! the `delayed-call` resource, over the instance's
//! [`Timers`](super::clock::Timers). Like the transport's host functions,
//! they only record what the guest asked; the instance's driver fires due
//! calls through the one call path ([`super::guest`]).

use wasmtime::component::Resource;

use super::bindings::twill::protocol::reactor;
use super::clock::{DelayedCallHandle, TimerError, delay_ns};
use super::state::ConnState;

/// Nanoseconds to the seconds a guest sees.
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl reactor::Host for ConnState {
    fn connect_tcp(
        &mut self,
        host: String,
        port: u16,
        timeout: f64,
        token: u64,
    ) -> wasmtime::Result<Result<(), String>> {
        Ok(ConnState::connect_tcp(self, host, port, timeout, token))
    }

    fn seconds(&mut self) -> wasmtime::Result<f64> {
        Ok(secs(self.timers.clock().now()))
    }

    fn call_later(
        &mut self,
        delay: f64,
        token: u64,
    ) -> wasmtime::Result<Resource<DelayedCallHandle>> {
        if !self.fires_timers {
            return Err(wasmtime::format_err!(
                "call-later: the component does not export twill:protocol/reactor-calls, so the call could never fire"
            ));
        }
        let delay = delay_ns(delay).map_err(|m| wasmtime::format_err!("{m}"))?;
        let handle = self
            .timers
            .call_later(delay, token)
            .map_err(|e: TimerError| wasmtime::format_err!("{e}"))?;
        // The handle of an active call is bounded by max-timers, not by
        // max-resources.
        self.size_table();
        match self.table.push(handle) {
            Ok(r) => Ok(r),
            Err(e) => {
                // No handle, no call: the guest could never cancel it.
                self.timers.cancel(handle);
                self.timers.release(handle);
                Err(e.into())
            }
        }
    }
}

/// What `connect-tcp` says to a plugin without grants.
const NO_GRANTS: &str = "this plugin may not open connections: grant it some with connect = [\"HOST:PORT\", ...] in its [plugins.NAME] table of plugins.toml";

impl ConnState {
    /// `reactor.connect-tcp`: checked, counted and handed to the dialer
    /// (the crate's `outbound` module); the outcome comes later.
    pub(super) fn connect_tcp(
        &mut self,
        host: String,
        port: u16,
        timeout: f64,
        token: u64,
    ) -> Result<(), String> {
        match &self.outbound {
            None => Err(NO_GRANTS.into()),
            Some(o) => o.connect(host, port, timeout, token),
        }
    }
}

impl reactor::HostDelayedCall for ConnState {
    fn get_time(&mut self, h: Resource<DelayedCallHandle>) -> wasmtime::Result<f64> {
        let h = *self.table.get(&h)?;
        Ok(secs(self.timers.due(h)))
    }

    fn cancel(&mut self, h: Resource<DelayedCallHandle>) -> wasmtime::Result<bool> {
        let h = *self.table.get(&h)?;
        Ok(self.timers.cancel(h))
    }

    fn reset(
        &mut self,
        h: Resource<DelayedCallHandle>,
        seconds_from_now: f64,
    ) -> wasmtime::Result<bool> {
        let h = *self.table.get(&h)?;
        let delay = delay_ns(seconds_from_now).map_err(|m| wasmtime::format_err!("{m}"))?;
        Ok(self.timers.reset(h, delay))
    }

    fn delay(
        &mut self,
        h: Resource<DelayedCallHandle>,
        seconds_later: f64,
    ) -> wasmtime::Result<bool> {
        let h = *self.table.get(&h)?;
        if seconds_later.is_nan() {
            return Err(wasmtime::format_err!("delay: not a number of seconds"));
        }
        let by = (seconds_later.clamp(-1e12, 1e12) * 1e9) as i128;
        Ok(self.timers.delay(h, by))
    }

    fn active(&mut self, h: Resource<DelayedCallHandle>) -> wasmtime::Result<bool> {
        let h = *self.table.get(&h)?;
        Ok(self.timers.is_active(h))
    }

    fn drop(&mut self, h: Resource<DelayedCallHandle>) -> wasmtime::Result<()> {
        let h = self.table.delete(h)?;
        self.timers.release(h);
        Ok(())
    }
}

//! The worker-event parser (one JSON line of the worker protocol, as the scheduler reads it):
//! any line is an event or an error, never a panic, and an event survives a round trip.
#![no_main]

use etagrid_spec::protocol::WorkerEvent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        if let Ok(ev) = serde_json::from_str::<WorkerEvent>(line) {
            let again = serde_json::to_string(&ev).expect("an event serializes");
            let back: WorkerEvent = serde_json::from_str(&again)
                .unwrap_or_else(|e| panic!("{again} does not parse back: {e}"));
            let _ = back.is_terminal();
        }
    }
});

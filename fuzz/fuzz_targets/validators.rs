//! Any text through the shared validators: they never panic, accept exactly
//! what their rule says, and their errors stay within the 1000 bytes every
//! error is cut to at the edge and never echo a long input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shepherd_platform::validate;

/// The longest message an error carries to a client.
const MAX_MESSAGE: usize = 1000;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let max = data.first().copied().unwrap_or(0) as usize;
    match validate::text("field", &text, max) {
        Ok(()) => assert!(text.len() <= max && !text.contains('\0')),
        Err(err) => {
            let message = err.to_string();
            assert!(message.len() < MAX_MESSAGE);
            assert!(text.len() <= 40 || !message.contains(text.as_ref()));
        }
    }
    if let Err(err) = validate::name("name", &text) {
        assert!(err.to_string().len() < MAX_MESSAGE);
    }
    if let Err(err) = validate::id("id", &text, "agent") {
        assert!(err.to_string().len() < MAX_MESSAGE);
    }
    assert!(validate::quote(&text).len() <= 40 * 10 + 8);
});

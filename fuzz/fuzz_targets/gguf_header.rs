//! The GGUF header parser on arbitrary bytes: it must return (Ok or a typed error) without
//! panicking, overflowing or allocating more than the input can justify; a parsed header's
//! tensors must lie inside what it claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pupil::model::gguf::parse_header;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = parse_header(data) {
        for t in &h.tensors {
            // Offsets were checked for overflow and overlap; reading must not panic.
            let _ = h.tensor_data(data, t);
            assert!(t.size > 0 && t.n_elements() > 0);
        }
        assert!(h.data_offset as usize <= data.len() + h.alignment as usize);
    }
});

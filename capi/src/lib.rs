//! # iocane-capi
//!
//! The C ABI of [`iocane_runtime`], built as `libiocane_capi.a` for C firmware (Zephyr,
//! STM32Cube, ESP-IDF, nRF SDK, bare metal). The header is `include/iocane.h`, generated from
//! this file by cbindgen (the `header_is_current` test fails when the checked-in copy is stale;
//! `IOCANE_BLESS=1 cargo test` rewrites it).
//!
//! Three calls and a few getters:
//!
//! - [`iocane_model_parse`] validates a blob once (magic, version, CRC, every layer and
//!   offset, the arena size) and fills a caller-owned [`iocane_model_t`] (no heap).
//! - [`iocane_model_arena_size`], [`iocane_model_input_len`], [`iocane_model_num_classes`]:
//!   the exact buffer sizes a run needs.
//! - [`iocane_model_run`] runs one image of u8 pixels into int32 logits and returns the class.
//! - [`iocane_status_name`] and [`iocane_status_message`]: static NUL-terminated strings for
//!   every status code.
//!
//! Every function returns a status code (`IOCANE_OK` = 0, or an `IOCANE_ERR_*`), checks every
//! pointer for NULL, and never unwinds or aborts: the runtime has no panicking path on any
//! input bytes (fuzzed in `fuzz/`), and this layer only converts pointers to slices after
//! checking them. On bare-metal targets (`target_os = "none"`) the crate is `no_std` and brings
//! a panic handler that parks the core (unreachable by construction, needed only to link); on a
//! hosted target (the host C test) it links std, and the `abort` panic strategy applies.
//!
//! ## Safety contract for C callers
//!
//! Pointers must be NULL or valid for the stated length; the blob must stay in place and
//! unchanged while the `iocane_model_t` that was parsed from it is used (it lives in flash in
//! practice); buffers must not overlap each other or the model. Nothing is retained between
//! calls except what `iocane_model_t` holds.
#![cfg_attr(target_os = "none", no_std)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
// The C names (`iocane_model_t`, `iocane_status`) are the API. The handle type is
// `iocane_model_t`, not `iocane_model`: the `model.h` that `iocane export` writes names its
// blob array `iocane_model`, and both go into the same C translation unit.
#![allow(non_camel_case_types)]

use core::ffi::c_char;
use core::mem::{align_of, size_of};

use iocane_runtime::{FormatError, Model, RunError};

/// A status code: `IOCANE_OK` (0) or one of the `IOCANE_ERR_*` codes (all positive).
pub type iocane_status = i32;

/// Success.
pub const IOCANE_OK: iocane_status = 0;
/// A required pointer argument is NULL.
pub const IOCANE_ERR_NULL_POINTER: iocane_status = 1;
/// The `iocane_model_t` was not filled by a successful `iocane_model_parse`.
pub const IOCANE_ERR_NOT_PARSED: iocane_status = 2;
/// The blob is shorter than the 64-byte header.
pub const IOCANE_ERR_TOO_SHORT: iocane_status = 3;
/// The blob does not start with the magic `ICNM`.
pub const IOCANE_ERR_BAD_MAGIC: iocane_status = 4;
/// The blob's format version is not the one this runtime reads.
pub const IOCANE_ERR_UNSUPPORTED_VERSION: iocane_status = 5;
/// The header length field is not 64.
pub const IOCANE_ERR_BAD_HEADER_LEN: iocane_status = 6;
/// The blob length differs from the header's total length (truncated or padded).
pub const IOCANE_ERR_LENGTH_MISMATCH: iocane_status = 7;
/// The CRC-32 does not match the content (corrupted).
pub const IOCANE_ERR_BAD_CRC: iocane_status = 8;
/// A reserved byte (header or layer record) is not zero.
pub const IOCANE_ERR_RESERVED_NOT_ZERO: iocane_status = 9;
/// Bad input shape or class count in the header.
pub const IOCANE_ERR_BAD_HEADER: iocane_status = 10;
/// The section table is malformed.
pub const IOCANE_ERR_BAD_SECTION: iocane_status = 11;
/// The labels are not UTF-8 with one line per class.
pub const IOCANE_ERR_BAD_LABELS: iocane_status = 12;
/// The metadata is not valid UTF-8.
pub const IOCANE_ERR_BAD_METADATA: iocane_status = 13;
/// The layer count is zero, too large, or does not match the layer section.
pub const IOCANE_ERR_BAD_LAYER_COUNT: iocane_status = 14;
/// A layer record is invalid (op, geometry, shapes, zero points, tensors, requantization,
/// accumulator range).
pub const IOCANE_ERR_BAD_LAYER: iocane_status = 15;
/// The header's arena size differs from the one the layers need.
pub const IOCANE_ERR_ARENA_MISMATCH: iocane_status = 16;
/// The pixel buffer does not hold exactly `iocane_model_input_len` pixels.
pub const IOCANE_ERR_INPUT_LENGTH: iocane_status = 17;
/// The arena is smaller than `iocane_model_arena_size` bytes.
pub const IOCANE_ERR_ARENA_TOO_SMALL: iocane_status = 18;
/// The logits buffer does not hold exactly `iocane_model_num_classes` slots.
pub const IOCANE_ERR_LOGITS_LENGTH: iocane_status = 19;

/// One past the largest status code (for loops over all codes).
pub const IOCANE_STATUS_COUNT: iocane_status = 20;

/// Name and message of every status code, indexed by code.
const STATUS: [(&[u8], &[u8]); IOCANE_STATUS_COUNT as usize] = [
    (b"IOCANE_OK\0", b"success\0"),
    (b"IOCANE_ERR_NULL_POINTER\0", b"a required pointer argument is NULL\0"),
    (b"IOCANE_ERR_NOT_PARSED\0", b"the model handle was not filled by a successful iocane_model_parse\0"),
    (b"IOCANE_ERR_TOO_SHORT\0", b"blob shorter than the 64-byte header\0"),
    (b"IOCANE_ERR_BAD_MAGIC\0", b"not an iocane model (bad magic, expected ICNM)\0"),
    (b"IOCANE_ERR_UNSUPPORTED_VERSION\0", b"unsupported format version\0"),
    (b"IOCANE_ERR_BAD_HEADER_LEN\0", b"header length field is not 64\0"),
    (b"IOCANE_ERR_LENGTH_MISMATCH\0", b"blob length differs from the header's total length (truncated or padded)\0"),
    (b"IOCANE_ERR_BAD_CRC\0", b"CRC-32 mismatch (corrupted blob)\0"),
    (b"IOCANE_ERR_RESERVED_NOT_ZERO\0", b"reserved bytes are not zero\0"),
    (b"IOCANE_ERR_BAD_HEADER\0", b"invalid input shape or class count in the header\0"),
    (b"IOCANE_ERR_BAD_SECTION\0", b"invalid section table\0"),
    (b"IOCANE_ERR_BAD_LABELS\0", b"labels are not UTF-8 with one line per class\0"),
    (b"IOCANE_ERR_BAD_METADATA\0", b"metadata is not valid UTF-8\0"),
    (b"IOCANE_ERR_BAD_LAYER_COUNT\0", b"invalid layer count\0"),
    (b"IOCANE_ERR_BAD_LAYER\0", b"invalid layer record\0"),
    (b"IOCANE_ERR_ARENA_MISMATCH\0", b"header arena size differs from the one the layers need\0"),
    (b"IOCANE_ERR_INPUT_LENGTH\0", b"pixel count differs from the model's input length\0"),
    (b"IOCANE_ERR_ARENA_TOO_SMALL\0", b"arena smaller than the model's arena size\0"),
    (b"IOCANE_ERR_LOGITS_LENGTH\0", b"logits buffer length differs from the model's class count\0"),
];

/// Returned by [`iocane_status_name`] and [`iocane_status_message`] for a code outside
/// `[0, IOCANE_STATUS_COUNT)`.
const UNKNOWN: (&[u8], &[u8]) = (b"IOCANE_ERR_UNKNOWN\0", b"unknown status code\0");

/// The status code of a format error.
pub fn format_status(e: &FormatError) -> iocane_status {
    match e {
        FormatError::TooShort { .. } => IOCANE_ERR_TOO_SHORT,
        FormatError::BadMagic => IOCANE_ERR_BAD_MAGIC,
        FormatError::UnsupportedVersion { .. } => IOCANE_ERR_UNSUPPORTED_VERSION,
        FormatError::BadHeaderLen => IOCANE_ERR_BAD_HEADER_LEN,
        FormatError::LengthMismatch { .. } => IOCANE_ERR_LENGTH_MISMATCH,
        FormatError::BadCrc { .. } => IOCANE_ERR_BAD_CRC,
        FormatError::ReservedNotZero { .. } => IOCANE_ERR_RESERVED_NOT_ZERO,
        FormatError::BadHeader => IOCANE_ERR_BAD_HEADER,
        FormatError::BadSection { .. } => IOCANE_ERR_BAD_SECTION,
        FormatError::BadLabels => IOCANE_ERR_BAD_LABELS,
        FormatError::BadMetadata => IOCANE_ERR_BAD_METADATA,
        FormatError::BadLayerCount => IOCANE_ERR_BAD_LAYER_COUNT,
        FormatError::BadLayer { .. } => IOCANE_ERR_BAD_LAYER,
        FormatError::ArenaMismatch { .. } => IOCANE_ERR_ARENA_MISMATCH,
    }
}

/// The status code of a run error.
pub fn run_status(e: &RunError) -> iocane_status {
    match e {
        RunError::InputLength { .. } => IOCANE_ERR_INPUT_LENGTH,
        RunError::ArenaTooSmall { .. } => IOCANE_ERR_ARENA_TOO_SMALL,
        RunError::LogitsLength { .. } => IOCANE_ERR_LOGITS_LENGTH,
    }
}

/// Words of storage for the parsed model inside [`iocane_model_t`].
pub const IOCANE_MODEL_WORDS: usize = 16;

/// `tag` of an [`iocane_model_t`] holding a parsed model ("ICNM" read little-endian, plus the
/// storage's address mixed in, so that a copied or garbage struct is not taken for one).
const TAG: usize = 0x4d4e_4349;

// The parsed `Model` must fit the opaque storage on every target.
const _: () = assert!(size_of::<Model<'static>>() <= IOCANE_MODEL_WORDS * size_of::<usize>());
const _: () = assert!(align_of::<Model<'static>>() <= align_of::<usize>());

/// A parsed, validated model: caller-owned storage (a local, a static, no heap), filled by
/// [`iocane_model_parse`]. Opaque: do not read or write its fields. It refers to the blob it
/// was parsed from, which must stay in place; do not copy the struct (parse again instead: a
/// copy reports `IOCANE_ERR_NOT_PARSED`).
#[repr(C)]
pub struct iocane_model_t {
    /// Private: the runtime's parsed model.
    opaque: [usize; IOCANE_MODEL_WORDS],
    /// Private: marks a successful parse.
    tag: usize,
}

impl iocane_model_t {
    fn tag_value(&self) -> usize {
        TAG ^ (self as *const Self as usize)
    }

    /// The parsed model, or `None` if this struct was not filled by a successful parse.
    fn get(&self) -> Option<&Model<'static>> {
        if self.tag != self.tag_value() {
            return None;
        }
        // SAFETY: the tag is set only by `iocane_model_parse` right after it wrote a valid
        // `Model` at the start of `opaque` (size and alignment asserted above), at this very
        // address (the tag mixes in the address). The `'static` lifetime stands for the C
        // caller's promise that the blob outlives the handle (see the crate's safety contract);
        // the reference handed out does not outlive `self`.
        Some(unsafe { &*self.opaque.as_ptr().cast::<Model<'static>>() })
    }
}

/// The slice of `len` elements at `ptr`, or `None` for NULL. A zero length gives an empty
/// slice without touching `ptr`.
///
/// # Safety
/// `ptr` must be NULL or valid for reads of `len` elements (the C caller's contract).
unsafe fn slice<'a, T>(ptr: *const T, len: usize) -> Option<&'a [T]> {
    if ptr.is_null() {
        return None;
    }
    if len == 0 {
        return Some(&[]);
    }
    // SAFETY: non-NULL and, by the caller's contract, valid for `len` reads; the C side does
    // not mutate it during the call.
    Some(unsafe { core::slice::from_raw_parts(ptr, len) })
}

/// Like [`slice`], mutable.
///
/// # Safety
/// `ptr` must be NULL or valid for reads and writes of `len` elements, not aliased elsewhere
/// during the call.
unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize) -> Option<&'a mut [T]> {
    if ptr.is_null() {
        return None;
    }
    if len == 0 {
        return Some(&mut []);
    }
    // SAFETY: non-NULL, valid for `len` reads and writes and not aliased (caller's contract).
    Some(unsafe { core::slice::from_raw_parts_mut(ptr, len) })
}

/// Parses and validates the `len`-byte model blob at `blob` into `*model`.
///
/// Returns `IOCANE_OK`, `IOCANE_ERR_NULL_POINTER`, or the format error (`IOCANE_ERR_TOO_SHORT`
/// to `IOCANE_ERR_ARENA_MISMATCH`). On error `*model` is marked unparsed (if `model` is not
/// NULL). The blob must stay in place, unchanged, while `*model` is used.
///
/// # Safety
/// `model` must be NULL or point to writable `iocane_model_t` storage; `blob` must be NULL or
/// valid for reads of `len` bytes for as long as `*model` is used.
#[no_mangle]
pub unsafe extern "C" fn iocane_model_parse(model: *mut iocane_model_t, blob: *const u8, len: usize) -> iocane_status {
    // SAFETY: NULL or valid writable storage (caller's contract); only its address is used
    // until the reference below.
    let Some(model) = (unsafe { model.as_mut() }) else {
        return IOCANE_ERR_NULL_POINTER;
    };
    model.tag = 0;
    // SAFETY: NULL or valid for `len` bytes for the handle's lifetime (caller's contract).
    let Some(bytes) = (unsafe { slice::<u8>(blob, len) }) else {
        return IOCANE_ERR_NULL_POINTER;
    };
    match Model::parse(bytes) {
        Ok(parsed) => {
            // SAFETY: `opaque` is large and aligned enough for a `Model` (asserted at compile
            // time); writing a `Copy` value over plain words needs no drop.
            unsafe { model.opaque.as_mut_ptr().cast::<Model<'static>>().write(parsed) };
            model.tag = model.tag_value();
            IOCANE_OK
        }
        Err(e) => format_status(&e),
    }
}

/// Bytes of arena [`iocane_model_run`] needs (exact; also `IOCANE_ARENA_SIZE` in the exported
/// `model.h`), or 0 if `model` is NULL or not parsed.
///
/// # Safety
/// `model` must be NULL or point to an `iocane_model_t` (parsed or not).
#[no_mangle]
pub unsafe extern "C" fn iocane_model_arena_size(model: *const iocane_model_t) -> usize {
    // SAFETY: NULL or a valid `iocane_model_t` (caller's contract).
    unsafe { model.as_ref() }.and_then(iocane_model_t::get).map_or(0, Model::arena_size)
}

/// Pixels per image (height x width x channels, u8 NHWC), or 0 if `model` is NULL or not parsed.
///
/// # Safety
/// `model` must be NULL or point to an `iocane_model_t` (parsed or not).
#[no_mangle]
pub unsafe extern "C" fn iocane_model_input_len(model: *const iocane_model_t) -> usize {
    // SAFETY: NULL or a valid `iocane_model_t` (caller's contract).
    unsafe { model.as_ref() }.and_then(iocane_model_t::get).map_or(0, Model::input_len)
}

/// Number of classes (logits per image), or 0 if `model` is NULL or not parsed.
///
/// # Safety
/// `model` must be NULL or point to an `iocane_model_t` (parsed or not).
#[no_mangle]
pub unsafe extern "C" fn iocane_model_num_classes(model: *const iocane_model_t) -> usize {
    // SAFETY: NULL or a valid `iocane_model_t` (caller's contract).
    unsafe { model.as_ref() }.and_then(iocane_model_t::get).map_or(0, Model::num_classes)
}

/// Runs one image: `pixels_len` u8 pixels (NHWC) through the model, using `arena_len` bytes
/// of scratch at `arena`, writing `logits_len` int32 logits. If `class_out` is not NULL it
/// receives the predicted class (argmax, ties to the lowest index).
///
/// Returns `IOCANE_OK`, `IOCANE_ERR_NULL_POINTER` (`model`, `pixels`, `arena` or `logits`
/// NULL), `IOCANE_ERR_NOT_PARSED`, `IOCANE_ERR_INPUT_LENGTH` (`pixels_len` is not
/// `iocane_model_input_len`), `IOCANE_ERR_ARENA_TOO_SMALL` (`arena_len` below
/// `iocane_model_arena_size`) or `IOCANE_ERR_LOGITS_LENGTH` (`logits_len` is not
/// `iocane_model_num_classes`). On error nothing is written to `logits` or `class_out`.
///
/// # Safety
/// Each pointer must be NULL or valid for its length (`arena` and `logits` writable,
/// `class_out` one writable `size_t`); the buffers must not overlap each other or the blob.
#[no_mangle]
pub unsafe extern "C" fn iocane_model_run(
    model: *const iocane_model_t,
    pixels: *const u8,
    pixels_len: usize,
    arena: *mut u8,
    arena_len: usize,
    logits: *mut i32,
    logits_len: usize,
    class_out: *mut usize,
) -> iocane_status {
    // SAFETY: each pointer is NULL or valid for its length, and the buffers are distinct
    // (caller's contract); NULL is rejected before any use.
    let (model, pixels, arena, logits) = unsafe {
        (model.as_ref(), slice(pixels, pixels_len), slice_mut(arena, arena_len), slice_mut(logits, logits_len))
    };
    let (Some(model), Some(pixels), Some(arena), Some(logits)) = (model, pixels, arena, logits) else {
        return IOCANE_ERR_NULL_POINTER;
    };
    let Some(model) = model.get() else {
        return IOCANE_ERR_NOT_PARSED;
    };
    match model.run(pixels, arena, logits) {
        Ok(class) => {
            // SAFETY: NULL or one writable `size_t` (caller's contract).
            if let Some(out) = unsafe { class_out.as_mut() } {
                *out = class;
            }
            IOCANE_OK
        }
        Err(e) => run_status(&e),
    }
}

fn status_entry(status: iocane_status) -> (&'static [u8], &'static [u8]) {
    usize::try_from(status).ok().and_then(|i| STATUS.get(i)).copied().unwrap_or(UNKNOWN)
}

/// The name of a status code as a static NUL-terminated string (`"IOCANE_ERR_BAD_CRC"`);
/// `"IOCANE_ERR_UNKNOWN"` for a code that is not one.
#[no_mangle]
pub extern "C" fn iocane_status_name(status: iocane_status) -> *const c_char {
    status_entry(status).0.as_ptr().cast()
}

/// A one-line English description of a status code, static and NUL-terminated.
#[no_mangle]
pub extern "C" fn iocane_status_message(status: iocane_status) -> *const c_char {
    status_entry(status).1.as_ptr().cast()
}

/// Bare metal has no panic runtime; the code above has no reachable panic (the runtime is
/// panic-free on any input, see the crate doc), so this only satisfies the linker. It parks
/// the core rather than returning into C with broken state.
#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests;

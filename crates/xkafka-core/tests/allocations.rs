//! What building a message allocates, counted by a global allocator that
//! counts the allocations of the thread that asks.

// A global allocator can only be an `unsafe impl`; this one forwards every
// call to `System` unchanged.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use xkafka_core::Message;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call goes to `System` unchanged; only a thread-local
// counter is added (a const-initialised `Cell`, which never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATIONS.with(Cell::get);
    let out = f();
    (out, ALLOCATIONS.with(Cell::get) - before)
}

#[test]
fn a_formatted_key_and_a_serialized_value_are_taken_over_without_allocating() {
    let topic: std::sync::Arc<str> = "orders".into();
    for i in [7_u32, 42, 999] {
        // As `format!` and serializers leave them: room to spare.
        let mut key = String::with_capacity(16);
        key.push_str(&format!("k{i}"));
        let mut value = Vec::with_capacity(64);
        value.extend_from_slice(format!("{{\"n\":{i}}}").as_bytes());
        assert!(key.capacity() > key.len() && value.capacity() > value.len());
        let builder = Message::builder(topic.clone());
        let (message, allocated) = allocations_of(|| builder.key(key).value(value).build());
        // `Bytes::from` would box a shared reference count for each (2).
        assert_eq!(allocated, 0, "building message {i}");
        assert_eq!(message.key_str(), Some(format!("k{i}").as_str()));
        assert_eq!(message.value_str(), Some(format!("{{\"n\":{i}}}").as_str()));
    }
}

#[test]
fn every_kind_of_key_and_value_keeps_its_bytes() {
    let big = vec![b'x'; 10_000];
    let mut spare = Vec::with_capacity(20_000);
    spare.extend_from_slice(&big);
    let cases: Vec<(Message, &[u8])> = vec![
        (Message::builder("t").value("static").build(), b"static"),
        (Message::builder("t").value(&b"slice"[..]).build(), b"slice"),
        (Message::builder("t").value(String::new()).build(), b""),
        (
            Message::builder("t").value(Vec::with_capacity(8)).build(),
            b"",
        ),
        (
            Message::builder("t")
                .value(Bytes::from_static(b"b"))
                .build(),
            b"b",
        ),
        (
            Message::builder("t")
                .value(bytes::BytesMut::from("m"))
                .build(),
            b"m",
        ),
        (Message::builder("t").value(big.clone()).build(), &big),
        (Message::builder("t").value(spare).build(), &big),
    ];
    for (message, expected) in cases {
        assert_eq!(message.value().map(|v| v.as_ref()), Some(expected));
    }
}

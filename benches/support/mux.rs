//! The raw baseline's protocol, over any byte stream: `[len u32][id u64][body]` frames, a client
//! that writes them under a lock while one reader task matches echoed frames to waiting callers
//! by id, and a server that echoes every complete frame it has read in one write. The same
//! shape as a Phalanx link, without the framework.

#![allow(dead_code)] // each bench uses part of it

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Bytes>>>>;

/// A multiplexing client over the write half `W`.
pub(crate) struct MuxClient<W> {
    write: Arc<tokio::sync::Mutex<W>>,
    waiters: Waiters,
    next: Arc<AtomicU64>,
}

impl<W> Clone for MuxClient<W> {
    fn clone(&self) -> Self {
        Self {
            write: self.write.clone(),
            waiters: self.waiters.clone(),
            next: self.next.clone(),
        }
    }
}

impl<W: AsyncWrite + Unpin + Send + 'static> MuxClient<W> {
    /// A client writing to `write`; answers arrive once [`MuxClient::read_from`] runs.
    pub(crate) fn new(write: W) -> Self {
        Self {
            write: Arc::new(tokio::sync::Mutex::new(write)),
            waiters: Arc::default(),
            next: Arc::default(),
        }
    }

    /// Reads echoed frames from `read` (in a task) and hands each to its caller.
    pub(crate) fn read_from(&self, mut read: impl AsyncRead + Unpin + Send + 'static) {
        let waiters = self.waiters.clone();
        tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 << 10);
            while read.read_buf(&mut buf).await.unwrap_or(0) > 0 {
                while let Some(mut frame) = take_frame(&mut buf) {
                    frame.advance(4);
                    let id = frame.get_u64();
                    if let Some(waiter) = waiters.lock().expect("waiters").remove(&id) {
                        let _ = waiter.send(frame.freeze());
                    }
                }
            }
        });
    }

    /// A client writing to `write` and reading answers from `read`.
    pub(crate) fn over(read: impl AsyncRead + Unpin + Send + 'static, write: W) -> Self {
        let client = Self::new(write);
        client.read_from(read);
        client
    }

    /// One round trip of `body`, as a closure the measurements can run.
    pub(crate) fn calls(
        &self,
        body: Bytes,
    ) -> impl Fn(usize) -> std::pin::Pin<Box<dyn std::future::Future<Output = usize> + Send>>
    + Clone
    + Send
    + 'static {
        let client = self.clone();
        move |_: usize| {
            let (client, body) = (client.clone(), body.clone());
            Box::pin(async move { client.call(body).await })
        }
    }

    /// One round trip of `body`; returns the echoed length.
    pub(crate) async fn call(&self, body: Bytes) -> usize {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("waiters").insert(id, tx);
        let mut frame = BytesMut::with_capacity(12 + body.len());
        frame.put_u32(8 + body.len() as u32);
        frame.put_u64(id);
        frame.extend_from_slice(&body);
        self.write
            .lock()
            .await
            .write_all(&frame)
            .await
            .expect("write");
        rx.await.expect("echo").len()
    }
}

/// Echoes every complete frame read from `read` to `write`, those read together in one write.
pub(crate) async fn echo(mut read: impl AsyncRead + Unpin, mut write: impl AsyncWrite + Unpin) {
    let mut buf = BytesMut::with_capacity(64 << 10);
    while read.read_buf(&mut buf).await.unwrap_or(0) > 0 {
        let mut out = BytesMut::new();
        while let Some(frame) = take_frame(&mut buf) {
            out.extend_from_slice(&frame);
        }
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// One whole frame, length prefix included, off the front of `buf`, if complete.
fn take_frame(buf: &mut BytesMut) -> Option<BytesMut> {
    let len = u32::from_be_bytes(buf.get(..4)?.try_into().expect("4 bytes")) as usize;
    (buf.len() >= 4 + len).then(|| buf.split_to(4 + len))
}

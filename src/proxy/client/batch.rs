//! Upstream requests written in batches: on Linux, under tokio's single-threaded
//! scheduler, the request writes that tasks make in one pass over the runnable tasks go out
//! in one `io_uring_enter` call instead of one `write` call each.
//!
//! Why: when keygate shares a core with its upstream (a model server on the same host, a
//! one-CPU container next to a local model), every write wakes the upstream, and the kernel
//! switches to it on the way back from that system call. The upstream then serves one
//! request per wake-up, and keygate is switched out and back in once per request. Written
//! together in one system call, a pass's requests wake the upstream once: it reads them all
//! in one round, and both sides do fewer, larger rounds (docs/performance.md has the
//! measurements). Nothing else gives this: a vectored write or `sendmmsg` covers one
//! socket, and each request goes to its own upstream connection.
//!
//! How: a write is queued with its socket and its buffer (which the queue owns until the
//! write is done), and one flusher task per thread, queued behind the tasks already
//! runnable, submits everything queued as `SEND` operations with `MSG_DONTWAIT`. Such an
//! operation never waits in the kernel (a full socket answers `EAGAIN`), so every one has
//! completed when the flush returns and nothing is left in flight. Whatever a batched
//! write did not send is written by the caller with an ordinary write. Should a submission
//! itself fail (never seen), the writes it covered report [`Sent::Unknown`] and fail
//! rather than risk being sent twice, their buffers are never freed (the kernel might still
//! read them), and the thread stops batching.
//!
//! Where this does not apply — another OS, a multi-threaded runtime (whose tasks move
//! between threads, and so between per-thread queues), a kernel or container without
//! io_uring — [`write`] hands the buffer back unwritten and the caller writes it itself.

use std::io;

use tokio::net::TcpStream;

/// What a batched write did.
#[derive(Debug)]
// Only Linux batches; elsewhere the caller still matches on it.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(super) enum Sent {
    /// The kernel accepted this many bytes (at least one).
    Bytes(usize),
    /// Nothing was sent: the socket was full (`WouldBlock`) or the operation failed.
    Nothing(io::Error),
    /// The submission failed in a way that leaves unknown whether the bytes left. Never
    /// seen in practice; the request must not be written again (that could send it twice).
    Unknown,
}

/// Writes what it can of `buf` to `tcp` in this pass's batch. `Err(buf)`: not batched
/// here (see the module doc); nothing was written. `Ok((sent, buf))`: what the batched
/// write did, and the buffer back (empty after [`Sent::Unknown`]).
#[cfg(target_os = "linux")]
pub(super) async fn write(tcp: &TcpStream, buf: Vec<u8>) -> Result<(Sent, Vec<u8>), Vec<u8>> {
    linux::write(tcp, buf).await
}

#[cfg(not(target_os = "linux"))]
pub(super) async fn write(_tcp: &TcpStream, buf: Vec<u8>) -> Result<(Sent, Vec<u8>), Vec<u8>> {
    Err(buf)
}

#[cfg(target_os = "linux")]
mod linux {
    use std::{
        cell::RefCell,
        future::Future,
        io,
        os::fd::{AsRawFd, RawFd},
        pin::Pin,
        sync::{
            atomic::{AtomicBool, Ordering},
            Arc,
        },
        task::{Context, Poll, Waker},
    };

    use io_uring::{opcode, types, IoUring};

    use super::Sent;
    use tokio::{net::TcpStream, runtime::RuntimeFlavor};

    /// Submission queue entries: a flush submits at most this many writes per call.
    const RING_ENTRIES: u32 = 64;

    thread_local! {
        static BATCH: RefCell<Batch> = RefCell::new(Batch::default());
    }

    #[derive(Default)]
    struct Batch {
        /// `None` until first used on this thread; `Some(None)` when io_uring is unavailable.
        ring: Option<Option<IoUring>>,
        /// Writes by ticket; `None` marks a free ticket.
        slots: Vec<Option<Slot>>,
        free: Vec<usize>,
        /// Tickets queued since the last flush, in order.
        queued: Vec<usize>,
        /// This thread's flusher, while its task (and runtime) is alive.
        flusher: Option<FlusherHandle>,
        /// Flushes that submitted something (tests check that writes were batched).
        flushes: usize,
        /// Changes whenever a new flusher (so a new runtime) takes over, so that a write
        /// queued under an earlier one is never confused with a current one.
        generation: u64,
    }

    struct Slot {
        fd: RawFd,
        buf: Vec<u8>,
        state: State,
    }

    enum State {
        Queued(Waker),
        Done(Sent),
    }

    struct FlusherHandle {
        /// Cleared when the flusher task is dropped (its runtime shut down), wherever
        /// that happens.
        alive: Arc<AtomicBool>,
        /// Set while it waits for work; taken when it is woken.
        waker: Option<Waker>,
    }

    pub(super) async fn write(tcp: &TcpStream, buf: Vec<u8>) -> Result<(Sent, Vec<u8>), Vec<u8>> {
        BatchedWrite {
            fd: tcp.as_raw_fd(),
            buf: Some(buf),
            ticket: None,
        }
        .await
    }

    /// A write in the queue. The socket must stay open while it is queued: the caller
    /// borrows the `TcpStream` for the future's life, and dropping the future takes the
    /// write out of the queue (leaking a queued future instead, with `mem::forget`, would
    /// leave its write to be sent on whatever socket then has that descriptor).
    struct BatchedWrite {
        fd: RawFd,
        /// The buffer before it is queued.
        buf: Option<Vec<u8>>,
        /// The ticket and the batch generation it was issued in, once queued.
        ticket: Option<(usize, u64)>,
    }

    impl Future for BatchedWrite {
        type Output = Result<(Sent, Vec<u8>), Vec<u8>>;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            let this = self.get_mut();
            let mut wake_flusher = None;
            let poll = BATCH.with(|batch| {
                let mut batch = batch.borrow_mut();
                match this.ticket {
                    None => {
                        let buf = this.buf.take().unwrap_or_default();
                        if !batch.usable() {
                            return Poll::Ready(Err(buf));
                        }
                        let ticket = batch.queue(this.fd, buf, cx.waker().clone());
                        this.ticket = Some((ticket, batch.generation));
                        if batch.queued.len() == 1 {
                            wake_flusher = batch.flusher.as_mut().and_then(|f| f.waker.take());
                        }
                        Poll::Pending
                    }
                    // A single-threaded runtime polls its tasks on one thread, and a
                    // flusher is replaced only when its runtime (with these tasks) is gone.
                    Some((_, generation)) if generation != batch.generation => {
                        unreachable!("a queued write polled under another runtime")
                    }
                    Some((ticket, _)) => {
                        let Some(Some(slot)) = batch.slots.get_mut(ticket) else {
                            unreachable!("only this future frees its ticket")
                        };
                        if let State::Queued(waker) = &mut slot.state {
                            if !waker.will_wake(cx.waker()) {
                                *waker = cx.waker().clone();
                            }
                            return Poll::Pending;
                        }
                        let Some(Slot {
                            buf,
                            state: State::Done(sent),
                            ..
                        }) = batch.slots[ticket].take()
                        else {
                            unreachable!("a slot that is not queued holds a finished write")
                        };
                        batch.free.push(ticket);
                        this.ticket = None;
                        Poll::Ready(Ok((sent, buf)))
                    }
                }
            });
            // Woken outside the borrow: waking never runs the task here, but stays clear
            // of the queue either way.
            if let Some(waker) = wake_flusher {
                waker.wake();
            }
            poll
        }
    }

    impl Drop for BatchedWrite {
        fn drop(&mut self) {
            let Some((ticket, generation)) = self.ticket else {
                return;
            };
            // `try_with`: the thread may be tearing its locals down. A runtime dropped on
            // another thread drops its tasks there: that thread's batch is not theirs (and
            // the next flusher here discards what they left).
            let _ = BATCH.try_with(|batch| {
                let mut batch = batch.borrow_mut();
                if batch.generation != generation {
                    return;
                }
                if let Some(slot) = batch.slots.get_mut(ticket) {
                    *slot = None;
                    batch.free.push(ticket);
                }
                batch.queued.retain(|queued| *queued != ticket);
            });
        }
    }

    impl Batch {
        /// Whether writes can be batched on this thread now: io_uring works and a flusher
        /// runs on this thread's single-threaded runtime (started here if needed).
        fn usable(&mut self) -> bool {
            if self
                .flusher
                .as_ref()
                .is_some_and(|f| f.alive.load(Ordering::Acquire))
            {
                return true;
            }
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                return false;
            };
            if handle.runtime_flavor() != RuntimeFlavor::CurrentThread {
                return false;
            }
            let ring = self.ring.get_or_insert_with(|| match sending_ring() {
                Ok(ring) => Some(ring),
                Err(err) => {
                    tracing::debug!(error = %err, "io_uring unavailable; upstream writes are not batched");
                    None
                }
            });
            if ring.is_none() {
                return false;
            }
            // Any write left belongs to a task of a runtime that is gone: never sent.
            self.slots.clear();
            self.free.clear();
            self.queued.clear();
            self.generation += 1;
            let alive = Arc::new(AtomicBool::new(true));
            self.flusher = Some(FlusherHandle {
                alive: alive.clone(),
                waker: None,
            });
            // Its first poll flushes what is queued by then and then waits to be woken.
            handle.spawn(Flusher { alive });
            true
        }

        fn queue(&mut self, fd: RawFd, buf: Vec<u8>, waker: Waker) -> usize {
            let slot = Some(Slot {
                fd,
                buf,
                state: State::Queued(waker),
            });
            let ticket = match self.free.pop() {
                Some(ticket) => {
                    self.slots[ticket] = slot;
                    ticket
                }
                None => {
                    self.slots.push(slot);
                    self.slots.len() - 1
                }
            };
            self.queued.push(ticket);
            ticket
        }

        /// Submits every queued write and records each outcome; returns the writers to
        /// wake. Every submitted write has completed when this returns.
        fn flush(&mut self) -> Vec<Waker> {
            let mut wakers = Vec::with_capacity(self.queued.len());
            let queued = std::mem::take(&mut self.queued);
            let Some(Some(ring)) = self.ring.as_mut() else {
                return wakers;
            };
            if !queued.is_empty() {
                self.flushes += 1;
            }
            let mut broken = false;
            for group in queued.chunks(RING_ENTRIES as usize) {
                let outcome = match broken {
                    false => submit(ring, &self.slots, group),
                    true => group.iter().map(|_| Sent::Unknown).collect(),
                };
                for (&ticket, sent) in group.iter().zip(outcome) {
                    if let Some(Some(slot)) = self.slots.get_mut(ticket) {
                        if matches!(sent, Sent::Unknown) {
                            // The kernel may still read this buffer: it is never freed.
                            std::mem::forget(std::mem::take(&mut slot.buf));
                            broken = true;
                        }
                        let state = std::mem::replace(&mut slot.state, State::Done(sent));
                        if let State::Queued(waker) = state {
                            wakers.push(waker);
                        }
                    }
                }
            }
            if broken {
                // Whatever the ring still holds must never be submitted: no more batching
                // on this thread.
                tracing::warn!("io_uring submission failed; upstream writes on this thread are no longer batched");
                self.ring = Some(None);
            }
            self.queued = queued;
            self.queued.clear();
            wakers
        }
    }

    /// A ring whose kernel supports `SEND` (Linux 5.6 and later; the probe itself is as old).
    fn sending_ring() -> io::Result<IoUring> {
        let ring = IoUring::new(RING_ENTRIES)?;
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Send::CODE) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this kernel's io_uring has no SEND",
            ));
        }
        Ok(ring)
    }

    /// Sends the writes of `group` in one submission and waits until each has completed
    /// (with `MSG_DONTWAIT` they complete during the submission); their results, in order.
    fn submit(ring: &mut IoUring, slots: &[Option<Slot>], group: &[usize]) -> Vec<Sent> {
        let mut results: Vec<Option<Sent>> = (0..group.len()).map(|_| None).collect();
        let mut pushed = 0;
        {
            let mut submission = ring.submission();
            for (index, &ticket) in group.iter().enumerate() {
                let Some(Some(slot)) = slots.get(ticket) else {
                    results[index] = Some(Sent::Nothing(io::ErrorKind::WouldBlock.into()));
                    continue;
                };
                let len = u32::try_from(slot.buf.len()).unwrap_or(u32::MAX);
                let entry = opcode::Send::new(types::Fd(slot.fd), slot.buf.as_ptr(), len)
                    .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
                    .build()
                    .user_data(index as u64);
                // SAFETY: the buffer is owned by its slot, which stays in place until this
                // function has reaped the entry's completion below; the descriptor is open
                // (see `BatchedWrite`).
                if unsafe { submission.push(&entry) }.is_err() {
                    // The ring is sized for a whole group; a full one means the write is
                    // simply not batched.
                    results[index] = Some(Sent::Nothing(io::ErrorKind::WouldBlock.into()));
                    continue;
                }
                pushed += 1;
            }
        }
        let mut completed = 0;
        let mut wait = false;
        while completed < pushed {
            let submitted = if wait {
                ring.submit_and_wait(pushed - completed)
            } else {
                ring.submit()
            };
            if let Err(err) = submitted {
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                // The kernel refused the submission; what it did not take was not sent. Any
                // entry it took completes, so wait for those below, once.
                tracing::debug!(error = %err, "io_uring submission failed");
                if !wait {
                    wait = true;
                    continue;
                }
                break;
            }
            for completion in ring.completion() {
                let Some(result) = usize::try_from(completion.user_data())
                    .ok()
                    .and_then(|index| results.get_mut(index))
                else {
                    continue;
                };
                let value = completion.result();
                *result = Some(match usize::try_from(value) {
                    Ok(0) => Sent::Nothing(io::ErrorKind::WriteZero.into()),
                    Ok(bytes) => Sent::Bytes(bytes),
                    Err(_) => Sent::Nothing(io::Error::from_raw_os_error(-value)),
                });
                completed += 1;
            }
            wait = true;
        }
        results
            .into_iter()
            // Pushed but never seen to complete (the submission failed): unknown.
            .map(|result| result.unwrap_or(Sent::Unknown))
            .collect()
    }

    /// Flushes on this thread so far that submitted at least one write.
    #[cfg(test)]
    pub(super) fn flushes() -> usize {
        BATCH.with(|batch| batch.borrow().flushes)
    }

    /// This thread's flusher: each time it runs (behind the tasks that were runnable when
    /// the first write of a batch was queued), it submits the batch.
    struct Flusher {
        alive: Arc<AtomicBool>,
    }

    impl Future for Flusher {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let wakers = BATCH.with(|batch| {
                let mut batch = batch.borrow_mut();
                let wakers = batch.flush();
                if let Some(flusher) = batch.flusher.as_mut() {
                    flusher.waker = Some(cx.waker().clone());
                }
                wakers
            });
            for waker in wakers {
                waker.wake();
            }
            Poll::Pending
        }
    }

    impl Drop for Flusher {
        fn drop(&mut self) {
            self.alive.store(false, Ordering::Release);
        }
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use std::{future::Future, time::Duration};

    use futures::future::join_all;
    use tokio::{
        io::AsyncReadExt,
        net::{TcpListener, TcpStream},
    };

    use super::{linux::flushes, write, Sent};

    /// A connected pair: (the writing side, the peer that reads).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    async fn read_exactly(peer: &mut TcpStream, len: usize) -> Vec<u8> {
        let mut got = vec![0; len];
        tokio::time::timeout(Duration::from_secs(5), peer.read_exact(&mut got))
            .await
            .expect("the bytes arrive")
            .unwrap();
        got
    }

    #[tokio::test]
    async fn writes_queued_in_one_pass_go_out_in_one_submission() {
        let mut pairs = Vec::new();
        for _ in 0..8 {
            pairs.push(pair().await);
        }
        let before = flushes();
        // One task polls all eight in one pass: they must leave together.
        let results = join_all(
            pairs
                .iter()
                .enumerate()
                .map(|(i, (tcp, _))| write(tcp, format!("request {i}\r\n").into_bytes())),
        )
        .await;
        assert_eq!(flushes() - before, 1, "one submission for the whole pass");
        for (i, ((tcp, mut peer), result)) in pairs.into_iter().zip(results).enumerate() {
            let expected = format!("request {i}\r\n").into_bytes();
            let (written, buf) = result.expect("batched on a single-threaded runtime");
            assert!(
                matches!(written, Sent::Bytes(n) if n == expected.len()),
                "{written:?}"
            );
            assert_eq!(buf, expected, "the buffer comes back as it was");
            assert_eq!(read_exactly(&mut peer, expected.len()).await, expected);
            drop(tcp);
        }
    }

    #[tokio::test]
    async fn a_full_socket_answers_would_block_and_keeps_the_buffer() {
        let (tcp, mut peer) = pair().await;
        // Fill the socket until the kernel takes no more (the peer reads nothing yet).
        let chunk = vec![b'x'; 64 * 1024];
        let mut filled = 0;
        loop {
            match tcp.try_write(&chunk) {
                Ok(n) => filled += n,
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(err) => panic!("{err}"),
            }
        }
        let (written, buf) = write(&tcp, b"after".to_vec()).await.expect("batched");
        assert!(
            matches!(&written, Sent::Nothing(err) if err.kind() == std::io::ErrorKind::WouldBlock),
            "{written:?}"
        );
        assert_eq!(buf, b"after");
        // Nothing of it was sent: the peer reads the filler and then nothing more.
        let got = read_exactly(&mut peer, filled).await;
        assert!(got.iter().all(|&b| b == b'x'));
        let mut more = [0u8; 1];
        assert!(
            tokio::time::timeout(Duration::from_millis(200), peer.read(&mut more))
                .await
                .is_err(),
            "no byte of the refused write arrives"
        );
    }

    #[tokio::test]
    async fn a_write_dropped_while_queued_is_never_sent() {
        let (dropped, mut dropped_peer) = pair().await;
        let (kept, mut kept_peer) = pair().await;
        let mut queued = Box::pin(write(&dropped, b"never".to_vec()));
        // Polled once: queued for the flush, not yet sent.
        assert!(futures::poll!(queued.as_mut()).is_pending());
        drop(queued);
        let (written, _) = write(&kept, b"sent".to_vec()).await.expect("batched");
        assert!(matches!(written, Sent::Bytes(4)), "{written:?}");
        assert_eq!(read_exactly(&mut kept_peer, 4).await, b"sent");
        drop(dropped);
        let mut rest = Vec::new();
        dropped_peer.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the dropped write sent {rest:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_multi_threaded_runtime_does_not_batch() {
        let (tcp, _peer) = pair().await;
        let unwritten = write(&tcp, b"plain".to_vec()).await;
        assert_eq!(unwritten.err().as_deref(), Some(&b"plain"[..]));
    }

    fn on_new_runtime<F: Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn a_write_left_queued_by_a_runtime_that_is_gone_is_never_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let std_stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut std_peer, _) = listener.accept().unwrap();
        std_stream.set_nonblocking(true).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Queued, and its runtime dropped before the flusher ran.
        let entered = runtime.enter();
        let tcp: &'static TcpStream = Box::leak(Box::new(TcpStream::from_std(std_stream).unwrap()));
        let mut queued = Box::pin(write(tcp, b"stale".to_vec()));
        runtime.block_on(async {
            assert!(futures::poll!(queued.as_mut()).is_pending());
        });
        drop(entered);
        drop(runtime);
        // Its task is dropped elsewhere, so it cannot take its write out of this thread's
        // queue: the next runtime here must discard it, not send it.
        std::thread::spawn(move || drop(queued)).join().unwrap();
        on_new_runtime(async {
            let (tcp, mut peer) = pair().await;
            let (written, _) = write(&tcp, b"fresh".to_vec()).await.expect("batched");
            assert!(matches!(written, Sent::Bytes(5)), "{written:?}");
            assert_eq!(read_exactly(&mut peer, 5).await, b"fresh");
        });
        std_peer
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = [0u8; 16];
        let read = std::io::Read::read(&mut std_peer, &mut got);
        assert!(
            matches!(&read, Err(err) if err.kind() == std::io::ErrorKind::WouldBlock),
            "the stale write was sent: {read:?}"
        );
    }

    #[test]
    fn a_later_runtime_on_the_same_thread_gets_its_own_flusher() {
        // The first runtime's flusher dies with it; the second must not wait on it.
        for round in 0..3 {
            on_new_runtime(async {
                let (tcp, mut peer) = pair().await;
                let written =
                    tokio::time::timeout(Duration::from_secs(5), write(&tcp, vec![round; 3]))
                        .await
                        .expect("flushed, not left waiting")
                        .expect("batched");
                assert!(matches!(written.0, Sent::Bytes(3)), "{:?}", written.0);
                assert_eq!(read_exactly(&mut peer, 3).await, vec![round; 3]);
            });
        }
    }
}

//! Hostile registries for fault tests and benchmarks: an HTTP responder on 127.0.0.1 that
//! answers slowly, endlessly, in redirect loops, or closes mid-body.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// How each connection of a [`Responder`] is answered.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Every answer (a 404) comes `delay` after the request.
    Slow(Duration),
    /// A 200 whose body never ends.
    Endless,
    /// A redirect to itself, forever.
    RedirectLoop,
    /// A 200 announcing 1 MB, closed after a few bytes.
    ClosesMidBody,
}

/// An HTTP responder on 127.0.0.1, one thread per connection, stopped when dropped.
pub struct Responder {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Responder {
    pub fn start(behaviour: Behaviour) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a responder");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener
            .local_addr()
            .expect("responder address")
            .to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut workers = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let stopping = Arc::clone(&stopping);
                        workers.push(std::thread::spawn(move || {
                            answer(stream, behaviour, &stopping);
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            for worker in workers {
                let _ = worker.join();
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn answer(mut stream: TcpStream, behaviour: Behaviour, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    loop {
        // One request head per round (keep-alive connections send several).
        let mut head = Vec::new();
        let mut byte = [0_u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            match stream.read(&mut byte) {
                Ok(0) => return,
                Ok(_) => head.push(byte[0]),
                Err(error)
                    if matches!(
                        error.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return,
            }
        }
        let path = String::from_utf8_lossy(&head)
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_owned();
        match behaviour {
            Behaviour::Slow(delay) => {
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let body = r#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
            Behaviour::Endless => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nDocker-Content-Digest: sha256:{}\r\n\r\n",
                    "0".repeat(64)
                );
                let chunk = [b' '; 16 * 1024];
                while !stop.load(Ordering::Relaxed) {
                    if stream.write_all(&chunk).is_err() {
                        return;
                    }
                }
                return;
            }
            Behaviour::RedirectLoop => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {path}\r\nContent-Length: 0\r\n\r\n"
                );
            }
            Behaviour::ClosesMidBody => {
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 1000000\r\n\r\n{{\"schemaVersion\": 2,"
                );
                return;
            }
        }
    }
}

//! A TCP relay between the workers and the simulator that can turn into a supplier whose
//! connections are reset: open ones are cut with a TCP RST, new ones are accepted and reset
//! at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub struct Proxy {
    pub port: u16,
    resetting: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
}

/// Closes `stream` with a reset rather than an orderly FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

impl Proxy {
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("the proxy binds");
        let port = listener.local_addr().unwrap().port();
        let resetting = Arc::new(AtomicBool::new(false));
        let (cut, _) = watch::channel(0u64);
        let proxy = Proxy { port, resetting: resetting.clone(), cut: cut.clone() };
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                if resetting.load(Ordering::SeqCst) {
                    reset(client);
                    continue;
                }
                let mut cut = cut.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        reset(client);
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => reset(client),
                    }
                });
            }
        });
        proxy
    }

    /// While on, every open connection is reset and every new one is reset on arrival.
    pub fn resetting(&self, on: bool) {
        self.resetting.store(on, Ordering::SeqCst);
        if on {
            self.cut.send_modify(|n| *n += 1);
        }
    }
}

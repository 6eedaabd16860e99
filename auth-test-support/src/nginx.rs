//! A real nginx on loopback, for the proxy tests: started in the foreground from a
//! generated configuration (pid, logs and temporary files in a scratch directory),
//! stopped when dropped. And [`echo`], a tiny upstream that answers every request with
//! the request's own headers, so a test sees exactly what the proxy passed on.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::Result;

/// The nginx binary: `$NGINX`, else `nginx` on the PATH, else Debian's `/usr/sbin/nginx`.
fn binary() -> Result<PathBuf> {
    crate::process::find_program(
        "nginx",
        "NGINX",
        "the proxy tests need a real nginx with the auth_request module \
         (apt-get install nginx-light)",
    )
}

/// A running nginx, killed when dropped.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Nginx {
    /// Starts nginx with `http_block` (directives and server blocks of the `http {}`
    /// context) and waits until `addr`, which one of its servers listens on, accepts.
    pub async fn start(tag: &str, http_block: &str, addr: SocketAddr) -> Result<Nginx> {
        let dir = crate::cluster::scratch_dir(&format!("nginx-{tag}"));
        std::fs::create_dir_all(&dir)?;
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, wrapper(&dir, http_block))?;
        let mut child = Command::new(binary()?)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let started = Instant::now();
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Nginx { child, addr, dir });
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                return Err(format!("nginx exited ({status}):\n{log}").into());
            }
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                return Err(format!("nginx did not listen on {addr}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// nginx's error log so far (for assertion messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The main configuration around `http_block`: one process in the foreground (no
/// master: as root it would need a user to switch to), everything under `dir`.
fn wrapper(dir: &Path, http_block: &str) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 128; }}\n\
         http {{\n    access_log off;\n    client_body_temp_path {d}/body;\n    \
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    \
         uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{http_block}\n}}\n"
    )
}

/// A loopback port that was free a moment ago (nginx cannot be handed a bound socket).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts the echo upstream on a loopback port: every request is answered `200` with
/// its request head (request line and headers, lower-cased names) as the body.
pub async fn echo() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // One request per connection; nginx's keepalive simply reconnects.
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let body: String = head
                    .lines()
                    .map(|l| match l.split_once(':') {
                        Some((k, v)) => format!("{}:{}\n", k.to_ascii_lowercase(), v),
                        None => format!("{l}\n"),
                    })
                    .collect();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

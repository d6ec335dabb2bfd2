//! The processes of a benchmark run, all on loopback: one backend (nginx
//! returning a fixed body), a websocket echo backend, and the three reverse
//! proxies configured alike: one worker or thread each, upstream keep-alive,
//! `X-Forwarded-For`/`-Proto` added, no access log.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::procs::{Proc, wait_for_port};

pub const BACKEND_PORT: u16 = 18081;
pub const ECHO_PORT: u16 = 18085;
pub const AGIMO_PORT: u16 = 18080;
pub const NGINX_PORT: u16 = 18082;
pub const HAPROXY_PORT: u16 = 18083;
pub const AGIMO_ADMIN_PORT: u16 = 18091;
/// gRPC listeners (cleartext HTTP/2), in front of the echo backend's gRPC.
pub const AGIMO_GRPC_PORT: u16 = 18180;
pub const NGINX_GRPC_PORT: u16 = 18182;
pub const HAPROXY_GRPC_PORT: u16 = 18183;
/// TLS passthrough: the backend's TLS port (nginx with a self-signed
/// certificate for [`TLS_HOST`]) and each proxy's, routing by SNI.
pub const BACKEND_TLS_PORT: u16 = 18086;
pub const AGIMO_TLS_PORT: u16 = 18280;
pub const NGINX_TLS_PORT: u16 = 18282;
pub const HAPROXY_TLS_PORT: u16 = 18283;
/// The SNI of the TLS passthrough scenario.
pub const TLS_HOST: &str = "bench.example";
pub const AGIMO_METRICS_PORT: u16 = 18090;

/// The ports of one Agimo instance.
#[derive(Clone, Copy, Debug)]
pub struct AgimoPorts {
    pub listener: u16,
    pub metrics: u16,
    pub admin: u16,
}

impl AgimoPorts {
    /// The instance of the side-by-side scenarios.
    pub const MAIN: AgimoPorts =
        AgimoPorts { listener: AGIMO_PORT, metrics: AGIMO_METRICS_PORT, admin: AGIMO_ADMIN_PORT };

    /// The `i`-th instance of the route-table sweep, which run side by side.
    pub fn sweep(i: u16) -> AgimoPorts {
        AgimoPorts { listener: 18100 + i, metrics: 18120 + i, admin: 18140 + i }
    }
}

/// HAProxy needs two descriptors per connection, and a process may have at
/// most 20,000 here (`ulimit -Hn`, which even root cannot raise without
/// CAP_SYS_RESOURCE).
pub const HAPROXY_MAXCONN: usize = 9_990;

/// The body every small request gets.
pub const SMALL_BODY: &str = "ok\n";
/// The size of `/1m`, the large download.
pub const LARGE: usize = 1 << 20;

/// What a target is: the backend itself (the control) or a proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Direct,
    Agimo,
    Nginx,
    Haproxy,
}

impl Target {
    pub const PROXIES: [Target; 3] = [Target::Agimo, Target::Nginx, Target::Haproxy];
    pub const ALL: [Target; 4] = [Target::Direct, Target::Agimo, Target::Nginx, Target::Haproxy];

    pub fn port(self) -> u16 {
        match self {
            Target::Direct => BACKEND_PORT,
            Target::Agimo => AGIMO_PORT,
            Target::Nginx => NGINX_PORT,
            Target::Haproxy => HAPROXY_PORT,
        }
    }

    /// Where the target takes gRPC calls (the direct target: the echo
    /// backend, which answers them).
    pub fn grpc_port(self) -> u16 {
        match self {
            Target::Direct => ECHO_PORT,
            Target::Agimo => AGIMO_GRPC_PORT,
            Target::Nginx => NGINX_GRPC_PORT,
            Target::Haproxy => HAPROXY_GRPC_PORT,
        }
    }

    /// Where the target takes TLS connections for [`TLS_HOST`] (the direct
    /// target: the backend, which terminates them).
    pub fn tls_port(self) -> u16 {
        match self {
            Target::Direct => BACKEND_TLS_PORT,
            Target::Agimo => AGIMO_TLS_PORT,
            Target::Nginx => NGINX_TLS_PORT,
            Target::Haproxy => HAPROXY_TLS_PORT,
        }
    }

    /// The most client connections the target is configured for.
    pub fn max_connections(self) -> usize {
        match self {
            Target::Haproxy => HAPROXY_MAXCONN,
            _ => 19_000,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Agimo => "agimo",
            Target::Nginx => "nginx",
            Target::Haproxy => "haproxy",
        }
    }
}

/// Where the binaries and the scratch directory are.
pub struct Env {
    pub work: PathBuf,
    pub agimo: PathBuf,
    pub echo: PathBuf,
}

impl Env {
    pub fn path(&self, name: &str) -> PathBuf {
        self.work.join(name)
    }
}

/// The backend: nginx with one worker answering `ok` on `/` and a 1 MiB file
/// on `/1m`, also over TLS (a self-signed ECDSA P-256 certificate for
/// [`TLS_HOST`], TLS 1.2 and 1.3, no session cache: every connection a full
/// handshake). (Uploads go to the echo backend, which reads the whole body
/// before it answers; nginx would answer first and close.)
pub fn start_backend(env: &Env) -> Result<Proc> {
    let www = env.path("www");
    fs::create_dir_all(&www)?;
    fs::write(www.join("1m"), vec![b'x'; LARGE])?;
    let cert = agimo_testkit::tls::self_signed(&[TLS_HOST]);
    let (cert_path, key_path) = (env.path("backend-tls.crt"), env.path("backend-tls.key"));
    fs::write(&cert_path, &cert.cert_pem)?;
    fs::write(&key_path, &cert.key_pem)?;
    let conf = format!(
        r#"{common}
http {{
  {http_common}
  server {{
    listen 127.0.0.1:{BACKEND_PORT} backlog=4096;
    location / {{ return 200 "{body}"; }}
    location = /1m {{ root {www}; }}
  }}
  server {{
    listen 127.0.0.1:{BACKEND_TLS_PORT} ssl backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_session_cache off;
    ssl_session_tickets off;
    location / {{ return 200 "{body}"; }}
  }}
}}
"#,
        common = nginx_common(env, "backend"),
        http_common = nginx_http_common(env, "backend"),
        body = SMALL_BODY.escape_default(),
        www = www.display(),
        cert = cert_path.display(),
        key = key_path.display(),
    );
    start_nginx(env, "backend", &conf, BACKEND_PORT)
}

/// The echo backend (Agimo's test echo server): websockets on `/ws`,
/// uploads on `/upload`, and gRPC calls over h2c (it answers with a message
/// describing the call, then echoes the request's messages).
pub fn start_echo(env: &Env) -> Result<Proc> {
    let proc = Proc::spawn(
        "echo",
        Command::new(&env.echo).args(["--listen", &format!("127.0.0.1:{ECHO_PORT}"), "--name", "echo"]),
        &env.path("echo.log"),
    )?;
    wait_for_port(ECHO_PORT, Duration::from_secs(10))?;
    Ok(proc)
}

/// nginx as the reverse proxy, and (its `stream` module, `ssl_preread`) as
/// the TLS passthrough proxy routing by SNI.
pub fn start_nginx_proxy(env: &Env) -> Result<Proc> {
    let conf = format!(
        r#"load_module /usr/lib/nginx/modules/ngx_stream_module.so;
{common}
stream {{
  map $ssl_preread_server_name $tls_upstream {{ {TLS_HOST} 127.0.0.1:{BACKEND_TLS_PORT}; default 127.0.0.1:1; }}
  server {{
    listen 127.0.0.1:{NGINX_TLS_PORT} backlog=4096;
    ssl_preread on;
    proxy_pass $tls_upstream;
  }}
}}
http {{
  {http_common}
  upstream backend {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 64; keepalive_requests 1000000; keepalive_timeout 300s; }}
  upstream echo {{ server 127.0.0.1:{ECHO_PORT}; keepalive 16; }}
  upstream echo_grpc {{ server 127.0.0.1:{ECHO_PORT}; keepalive 16; }}
  server {{
    listen 127.0.0.1:{NGINX_GRPC_PORT} http2 backlog=4096;
    location / {{
      grpc_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      grpc_pass grpc://echo_grpc;
    }}
  }}
  map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
  server {{
    listen 127.0.0.1:{NGINX_PORT} backlog=4096;
    proxy_http_version 1.1;
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    location / {{
      proxy_set_header Connection "";
      proxy_pass http://backend;
    }}
    location = /1m {{
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_pass http://backend;
    }}
    location = /upload {{
      proxy_set_header Connection "";
      client_max_body_size 0;
      proxy_request_buffering off;
      proxy_pass http://echo;
    }}
    location /ws {{
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 3600s;
      proxy_pass http://echo;
    }}
  }}
}}
"#,
        common = nginx_common(env, "nginx"),
        http_common = nginx_http_common(env, "nginx"),
    );
    start_nginx(env, "nginx", &conf, NGINX_PORT)
}

fn nginx_common(env: &Env, name: &str) -> String {
    format!(
        "daemon off;\nmaster_process on;\nworker_processes 1;\npid {pid};\n\
         error_log {log} warn;\nevents {{ worker_connections 19000; }}",
        pid = env.path(&format!("{name}.pid")).display(),
        log = env.path(&format!("{name}-error.log")).display(),
    )
}

fn nginx_http_common(env: &Env, name: &str) -> String {
    let temp = env.path(&format!("{name}-temp"));
    let _ = fs::create_dir_all(&temp);
    let t = temp.display();
    format!(
        "access_log off;\n  keepalive_requests 1000000;\n  keepalive_timeout 300s;\n  \
         client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n  fastcgi_temp_path {t}/fastcgi;\n  \
         uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;"
    )
}

fn start_nginx(env: &Env, name: &str, conf: &str, port: u16) -> Result<Proc> {
    let path = env.path(&format!("{name}.conf"));
    fs::write(&path, conf)?;
    let proc = Proc::spawn(
        name,
        Command::new("nginx").arg("-c").arg(&path).arg("-p").arg(&env.work),
        &env.path(&format!("{name}.log")),
    )?;
    wait_for_port(port, Duration::from_secs(10))
        .with_context(|| format!("{name} did not start; see {}", env.work.display()))?;
    Ok(proc)
}

/// HAProxy as the reverse proxy.
pub fn start_haproxy(env: &Env) -> Result<Proc> {
    let conf = format!(
        r#"global
  nbthread 1
  maxconn {HAPROXY_MAXCONN}
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 3600s
  timeout tunnel 3600s
  timeout http-keep-alive 300s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:{HAPROXY_PORT}
  http-request set-header X-Forwarded-Proto http
  use_backend echo if {{ path_beg /ws }} || {{ path /upload }}
  default_backend backend
backend backend
  server s1 127.0.0.1:{BACKEND_PORT}
backend echo
  server s1 127.0.0.1:{ECHO_PORT}
frontend tls
  mode tcp
  bind 127.0.0.1:{HAPROXY_TLS_PORT}
  tcp-request inspect-delay 5s
  tcp-request content accept if {{ req_ssl_hello_type 1 }}
  use_backend backend_tls if {{ req.ssl_sni -i {TLS_HOST} }}
backend backend_tls
  mode tcp
  server s1 127.0.0.1:{BACKEND_TLS_PORT}
frontend grpc
  bind 127.0.0.1:{HAPROXY_GRPC_PORT} proto h2
  default_backend echo_grpc
backend echo_grpc
  server s1 127.0.0.1:{ECHO_PORT} proto h2
"#
    );
    let path = env.path("haproxy.cfg");
    fs::write(&path, conf)?;
    let proc =
        Proc::spawn("haproxy", Command::new("haproxy").arg("-db").arg("-f").arg(&path), &env.path("haproxy.log"))?;
    wait_for_port(HAPROXY_PORT, Duration::from_secs(10))?;
    Ok(proc)
}

/// Agimo in standalone mode on the YAML in `config` (see [`crate::config`]),
/// with one worker thread.
pub fn start_agimo(env: &Env, config: &Path, log: &str, ports: AgimoPorts) -> Result<Proc> {
    let proc = Proc::spawn(
        "agimo",
        Command::new(&env.agimo)
            .arg("standalone")
            .arg("--config")
            .arg(config)
            .args(["--bind-address", "127.0.0.1", "--log-format", "json", "--worker-threads", "1"])
            .args(["--metrics-address", &format!("127.0.0.1:{}", ports.metrics)])
            .args(["--admin-address", &format!("127.0.0.1:{}", ports.admin)])
            .args(["--keda-scaler-address", "off"])
            .env("RUST_LOG", "warn,agimo_controller::runtime=info"),
        &env.path(log),
    )?;
    wait_for_port(ports.admin, Duration::from_secs(30))?;
    Ok(proc)
}

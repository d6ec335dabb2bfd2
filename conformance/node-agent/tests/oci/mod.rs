//! Small OCI image layouts for the tests, written as a registry or
//! `skopeo copy … oci:DIR` would write them: gzip layers made with `tar`,
//! config, manifest and `index.json` with their sha256 digests.

// Each test crate uses only some of these.
#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};

pub fn sha256(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    format!("sha256:{}", digest.as_ref().iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Stores `data` as a blob of `layout`; returns its descriptor.
pub fn write_blob(layout: &Path, media_type: &str, data: &[u8]) -> Value {
    let digest = sha256(data);
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("blobs/sha256").join(&digest[7..]), data).unwrap();
    json!({"mediaType": media_type, "digest": digest, "size": data.len()})
}

/// An entry of a test layer: path, mode, owner (uid and gid), and content
/// (`None`: a directory; `Some(Err(target))`: a symlink).
pub type Entry<'a> = (&'a str, u32, u64, Option<Result<&'a [u8], &'a str>>);

/// A gzip-compressed tar layer of `entries`.
pub fn layer(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, mode, owner, content) in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mode(*mode);
        header.set_uid(*owner);
        header.set_gid(*owner);
        header.set_mtime(1_700_000_000);
        match content {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty()).unwrap();
            }
            Some(Ok(data)) => {
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, *data).unwrap();
            }
            Some(Err(target)) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_size(0);
                builder.append_link(&mut header, path, target).unwrap();
            }
        }
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&builder.into_inner().unwrap()).unwrap();
    gz.finish().unwrap()
}

/// The layers of a busybox image: `/bin/busybox` (Debian's static one) and
/// `/bin/sh`, a user `nonroot` (65532) in a group `extra` (4000),
/// `/etc/os-release-from-image`, `/etc/resolv.conf` an absolute symlink,
/// and a second layer that whites `/old/file` out (`/old/kept` stays).
pub fn busybox_layers() -> Vec<Vec<u8>> {
    let busybox = fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n";
    let group = b"root:x:0:\nnonroot:x:65532:\nextra:x:4000:nonroot\n";
    let base = layer(&[
        ("bin", 0o755, 0, None),
        ("bin/busybox", 0o755, 0, Some(Ok(&busybox))),
        ("bin/sh", 0o777, 0, Some(Err("busybox"))),
        ("etc", 0o755, 0, None),
        ("etc/passwd", 0o644, 0, Some(Ok(passwd))),
        ("etc/group", 0o644, 0, Some(Ok(group))),
        ("etc/os-release-from-image", 0o644, 0, Some(Ok(b"agimo test image\n"))),
        ("etc/resolv.conf", 0o777, 0, Some(Err("/run/systemd/resolve/stub-resolv.conf"))),
        ("home/nonroot", 0o700, 65532, None),
        ("old/file", 0o644, 0, Some(Ok(b"lower"))),
        ("old/kept", 0o644, 0, Some(Ok(b"kept"))),
    ]);
    let top = layer(&[("old/.wh.file", 0o644, 0, Some(Ok(b"")))]);
    vec![base, top]
}

/// Writes an image of `layers` with the image config `config` into
/// `layout` and names it `name` in its `index.json` (replacing an entry of
/// that name; the index is replaced atomically, as the agent may be reading
/// it). Returns the manifest's digest.
pub fn write_image(layout: &Path, name: &str, layers: &[Vec<u8>], config: Value) -> String {
    let layers: Vec<Value> =
        layers.iter().map(|l| write_blob(layout, "application/vnd.oci.image.layer.v1.tar+gzip", l)).collect();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": config, "rootfs": {"type": "layers", "diff_ids": []}
    }))
    .unwrap();
    let config = write_blob(layout, "application/vnd.oci.image.config.v1+json", &config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": layers
    }))
    .unwrap();
    let mut entry = write_blob(layout, "application/vnd.oci.image.manifest.v1+json", &manifest);
    let tag = name.rsplit(':').next().unwrap_or("latest");
    entry["annotations"] = json!({"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag});
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index_path = layout.join("index.json");
    let mut index: Value = fs::read(&index_path)
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_else(|| json!({"schemaVersion": 2, "manifests": []}));
    let manifests = index["manifests"].as_array_mut().unwrap();
    manifests.retain(|m| m["annotations"]["io.containerd.image.name"] != name);
    manifests.push(entry.clone());
    let partial = layout.join(format!("index.json.{}", std::process::id()));
    fs::write(&partial, serde_json::to_vec(&index).unwrap()).unwrap();
    fs::rename(&partial, &index_path).unwrap();
    entry["digest"].as_str().unwrap().to_owned()
}

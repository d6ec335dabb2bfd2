//! The node's images: OCI image layouts given with `--image-layout DIR` (a
//! directory with `oci-layout`, `index.json` and `blobs/sha256/…`, as
//! `skopeo copy … oci:DIR`, buildah or `ctr images export` write them) are
//! this node's registry and content store. A pod's image reference is
//! normalised as containerd does (`nginx` → `docker.io/library/nginx:latest`)
//! and looked up among the layouts' `index.json` entries by their annotation
//! `io.containerd.image.name`, or `org.opencontainers.image.ref.name` when
//! that holds a full reference (a bare tag names no repository and is not
//! matched); `name@sha256:…` matches the entry with that digest. The
//! layouts' `index.json` files are read at each lookup (when a pod's worker
//! starts), so an image written into a layout while the agent runs is found
//! by the pods created after.
//!
//! ```text
//!   container.image ──Reference::parse──▶ docker.io/library/nginx:latest
//!        ──find: index.json annotations──▶ Found (layout, descriptor)
//!        ──pull: image index → linux/<arch> manifest → config + layers (sizes and digests checked)
//!        ──unpack: layers in order, whiteouts applied──▶ <state>/images/sha256-<manifest>/rootfs
//! ```
//!
//! A root filesystem is unpacked once per manifest digest into a temporary
//! directory and renamed into place, so a container never sees a partial
//! one and later containers reuse it; containers only ever use it as the
//! read-only lower layer of an overlay ([`crate::enter`]). Layers keep
//! modes, numeric owners (when the agent runs as root), symlinks and hard
//! links; OCI whiteouts (`.wh.NAME`, `.wh..wh..opq`) remove what lower
//! layers put there (an opaque marker keeps what its own layer put in the
//! directory, wherever the marker comes in the tar). An entry with a `..`
//! component, or one that would be
//! written through a symlink leading out of the root, fails the pull.
//! Device nodes and FIFOs in layers are skipped, and extended attributes
//! are not unpacked.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufReader, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::digest::{Context, SHA256};
use serde::Deserialize;

/// The index annotation containerd writes with the image's full name.
pub const NAME_ANNOTATION: &str = "io.containerd.image.name";
/// The OCI annotation naming a reference (often a bare tag).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Manifests, indexes and configs larger than this are refused.
const MAX_JSON: u64 = 4 << 20;

/// Why an image cannot be found, read or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {why}")]
    Reference { reference: String, why: &'static str },
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Json { what: String, source: serde_json::Error },
    #[error("blob {digest}: {why}")]
    Blob { digest: String, why: String },
    #[error("unsupported digest {0:?} (sha256 only)")]
    Digest(String),
    #[error("unsupported media type {media_type:?} of {digest}")]
    MediaType { media_type: String, digest: String },
    #[error("the image index {digest} has no manifest for linux/{arch}")]
    Platform { digest: String, arch: &'static str },
    #[error("layer {layer}: entry {path:?} {why}")]
    Entry { layer: String, path: String, why: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_owned(), source }
}

/// A normalised image reference, as containerd names images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io/library/nginx`, `ghcr.io/agimo-dev/agimo`.
    pub repository: String,
    /// `latest` when the reference has neither tag nor digest.
    pub tag: Option<String>,
    /// `sha256:…`; a reference with a digest is resolved by it alone.
    pub digest: Option<String>,
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl Reference {
    /// Parses and normalises `reference` as docker and containerd do: a
    /// name without a registry is on `docker.io`, one without a path there
    /// is under `library/`, and a name with neither tag nor digest gets
    /// `:latest`. The first component names a registry when it has a `.`
    /// or a `:` or is `localhost`.
    pub fn parse(reference: &str) -> Result<Reference, ImageError> {
        let bad = |why| ImageError::Reference { reference: reference.to_owned(), why };
        let (name, digest) = match reference.split_once('@') {
            Some((name, digest)) => {
                check_digest(digest).map_err(|_| bad("invalid digest"))?;
                (name, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        let (name, tag) = match name.rfind(':') {
            Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
            _ => (name, None),
        };
        if let Some(tag) = tag {
            let mut chars = tag.chars();
            let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if !first_ok || tag.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
                return Err(bad("invalid tag"));
            }
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => (first, rest.to_owned()),
            _ => ("docker.io", name.to_owned()),
        };
        let domain = if domain == "index.docker.io" { "docker.io" } else { domain };
        let path = if domain == "docker.io" && !path.contains('/') { format!("library/{path}") } else { path };
        if domain.is_empty() || path.is_empty() {
            return Err(bad("empty name"));
        }
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(bad("repository name must be lowercase"));
        }
        let component_ok = |c: &str| {
            let bytes = c.as_bytes();
            !c.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        };
        if !path.split('/').all(component_ok) {
            return Err(bad("invalid repository name"));
        }
        let tag = match (tag, &digest) {
            (Some(tag), _) => Some(tag.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(Reference { repository: format!("{domain}/{path}"), tag, digest })
    }

    /// Whether the index entry named `name` (with descriptor digest
    /// `digest`) is this image: same repository, and the same digest if
    /// this reference has one, else the same tag.
    fn matches(&self, name: &Reference, digest: &str) -> bool {
        if self.repository != name.repository {
            return false;
        }
        match &self.digest {
            Some(want) => want == digest,
            None => self.tag == name.tag,
        }
    }
}

/// `sha256:<64 lowercase hex digits>` → the hex digits.
fn check_digest(digest: &str) -> Result<&str, ImageError> {
    match digest.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => {
            Ok(hex)
        }
        _ => Err(ImageError::Digest(digest.to_owned())),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OCI content descriptor (the fields used here).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

/// `index.json`, or an image index blob.
#[derive(Debug, Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Debug, Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// The image configuration blob (the fields used here).
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ImageConfig>,
    #[serde(default)]
    rootfs: Option<RootFs>,
}

#[derive(Debug, Default, Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<String>,
}

/// What an image says about how to run it (`config` in its configuration).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// An image found in a layout's index, not read yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub layout: PathBuf,
    pub descriptor: Descriptor,
    /// The reference asked for, normalised.
    pub reference: Reference,
}

/// An image read, checked and unpacked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pulled {
    /// `<repository>@sha256:…` (the digest of the index entry), the
    /// container status's `imageID`, as containerd reports it.
    pub image_id: String,
    /// The digest of the manifest for this platform.
    pub manifest: String,
    pub config: ImageConfig,
    /// The unpacked root filesystem; never written to.
    pub rootfs: PathBuf,
    /// The layers' compressed size.
    pub size: u64,
    /// The root filesystem was there already.
    pub cached: bool,
}

/// The node's images: the layouts to look in and where root filesystems
/// are unpacked.
#[derive(Clone, Debug)]
pub struct ImageStore {
    layouts: Vec<PathBuf>,
    cache: PathBuf,
}

impl ImageStore {
    /// A store over `layouts`, unpacking into `cache`. Unpacks an earlier
    /// agent left half done are removed.
    pub fn new(layouts: Vec<PathBuf>, cache: PathBuf) -> ImageStore {
        if let Ok(entries) = fs::read_dir(&cache) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().contains(".partial-") {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
        ImageStore { layouts, cache }
    }

    /// The index entry for `image` in the first layout that has it; `None`
    /// if no layout has it (or the reference is not one containerd would
    /// accept). A layout whose index cannot be read is skipped with a
    /// warning.
    pub fn find(&self, image: &str) -> Option<Found> {
        let reference = Reference::parse(image).ok()?;
        for layout in &self.layouts {
            match find_in(layout, &reference) {
                Ok(Some(descriptor)) => {
                    return Some(Found { layout: layout.clone(), descriptor, reference });
                }
                Ok(None) => {}
                // Not written yet (the agent warned at startup).
                Err(ImageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                    tracing::debug!(layout = %layout.display(), "no index.json in the image layout");
                }
                Err(e) => tracing::warn!(layout = %layout.display(), "cannot read the image layout: {e}"),
            }
        }
        None
    }

    /// Reads the image's manifest (the one for this node's platform if the
    /// entry is an image index) and configuration, checking digests, and
    /// unpacks its layers unless that was done before.
    pub fn pull(&self, found: &Found) -> Result<Pulled, ImageError> {
        let top = &found.descriptor;
        let blob = read_json_blob(&found.layout, top)?;
        let manifest_descriptor = if is_index(top, &blob) {
            let index: Index =
                serde_json::from_slice(&blob).map_err(|source| json_error(&top.digest, "image index", source))?;
            let arch = platform_arch();
            index
                .manifests
                .into_iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch))
                .ok_or(ImageError::Platform { digest: top.digest.clone(), arch })?
        } else {
            top.clone()
        };
        let blob = if manifest_descriptor.digest == top.digest {
            blob
        } else {
            read_json_blob(&found.layout, &manifest_descriptor)?
        };
        let manifest: Manifest = serde_json::from_slice(&blob)
            .map_err(|source| json_error(&manifest_descriptor.digest, "manifest", source))?;
        let config_blob = read_json_blob(&found.layout, &manifest.config)?;
        let config: ConfigFile = serde_json::from_slice(&config_blob)
            .map_err(|source| json_error(&manifest.config.digest, "image config", source))?;
        let diff_ids = config.rootfs.map(|r| r.diff_ids).unwrap_or_default();
        if !diff_ids.is_empty() && diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::Blob {
                digest: manifest.config.digest.clone(),
                why: format!("{} diff_ids for {} layers", diff_ids.len(), manifest.layers.len()),
            });
        }
        let (rootfs, cached) = self.unpack(&found.layout, &manifest_descriptor.digest, &manifest.layers, &diff_ids)?;
        Ok(Pulled {
            image_id: format!("{}@{}", found.reference.repository, top.digest),
            manifest: manifest_descriptor.digest,
            config: config.config.unwrap_or_default(),
            rootfs,
            size: manifest.layers.iter().map(|l| l.size).sum(),
            cached,
        })
    }

    /// The root filesystem of the manifest `digest`: unpacked from
    /// `layers` into a temporary directory, then renamed into place.
    fn unpack(
        &self,
        layout: &Path,
        digest: &str,
        layers: &[Descriptor],
        diff_ids: &[String],
    ) -> Result<(PathBuf, bool), ImageError> {
        let hex = check_digest(digest)?;
        let dir = self.cache.join(format!("sha256-{hex}"));
        let rootfs = dir.join("rootfs");
        if rootfs.is_dir() {
            return Ok((rootfs, true));
        }
        fs::create_dir_all(&self.cache).map_err(io_error(&self.cache))?;
        static UNPACKS: AtomicU64 = AtomicU64::new(0);
        let n = UNPACKS.fetch_add(1, Ordering::Relaxed);
        let partial = self.cache.join(format!(".sha256-{hex}.partial-{}-{n}", std::process::id()));
        let partial_rootfs = partial.join("rootfs");
        let unpacked = (|| {
            fs::create_dir_all(&partial_rootfs).map_err(io_error(&partial_rootfs))?;
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&partial_rootfs, fs::Permissions::from_mode(0o755))
                .map_err(io_error(&partial_rootfs))?;
            for (i, layer) in layers.iter().enumerate() {
                apply_layer(layout, layer, diff_ids.get(i).map(String::as_str), &partial_rootfs)?;
            }
            Ok(())
        })();
        if let Err(e) = unpacked {
            let _ = fs::remove_dir_all(&partial);
            return Err(e);
        }
        if let Err(e) = fs::rename(&partial, &dir) {
            let _ = fs::remove_dir_all(&partial);
            // Another container unpacked the same image meanwhile.
            if !rootfs.is_dir() {
                return Err(ImageError::Io { path: dir, source: e });
            }
        }
        Ok((rootfs, false))
    }
}

/// The index entry of `layout` that is `reference`, if any.
fn find_in(layout: &Path, reference: &Reference) -> Result<Option<Descriptor>, ImageError> {
    let path = layout.join("index.json");
    let text = fs::read(&path).map_err(io_error(&path))?;
    let index: Index = serde_json::from_slice(&text)
        .map_err(|source| ImageError::Json { what: path.display().to_string(), source })?;
    Ok(index.manifests.into_iter().find(|d| {
        let annotations = d.annotations.as_ref();
        let name = annotations.and_then(|a| a.get(NAME_ANNOTATION)).or_else(|| {
            // A bare tag (no `/` or `:`) names no repository.
            annotations.and_then(|a| a.get(REF_NAME_ANNOTATION)).filter(|r| r.contains(['/', ':']))
        });
        name.and_then(|n| Reference::parse(n).ok()).is_some_and(|n| reference.matches(&n, &d.digest))
    }))
}

/// The architecture of this node as OCI platforms name it.
fn platform_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

fn json_error(digest: &str, what: &str, source: serde_json::Error) -> ImageError {
    ImageError::Json { what: format!("{what} {digest}"), source }
}

fn is_index(descriptor: &Descriptor, blob: &[u8]) -> bool {
    match descriptor.media_type.as_deref() {
        Some(
            "application/vnd.oci.image.index.v1+json" | "application/vnd.docker.distribution.manifest.list.v2+json",
        ) => true,
        Some(_) => false,
        None => serde_json::from_slice::<serde_json::Value>(blob).is_ok_and(|v| v.get("manifests").is_some()),
    }
}

/// The path of a blob in a layout.
fn blob_path(layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    Ok(layout.join("blobs").join("sha256").join(check_digest(digest)?))
}

/// A small blob (manifest, index, config), its size and digest checked.
fn read_json_blob(layout: &Path, descriptor: &Descriptor) -> Result<Vec<u8>, ImageError> {
    let path = blob_path(layout, &descriptor.digest)?;
    if descriptor.size > MAX_JSON {
        let why = format!("{} bytes is too large for a manifest or config", descriptor.size);
        return Err(ImageError::Blob { digest: descriptor.digest.clone(), why });
    }
    let file = fs::File::open(&path).map_err(io_error(&path))?;
    let mut data = Vec::new();
    file.take(MAX_JSON + 1).read_to_end(&mut data).map_err(io_error(&path))?;
    check_blob(descriptor, data.len() as u64, &sha256(&data))?;
    Ok(data)
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(ring::digest::digest(&SHA256, data).as_ref()))
}

/// Checks what was read of a blob against its descriptor.
fn check_blob(descriptor: &Descriptor, size: u64, digest: &str) -> Result<(), ImageError> {
    let fail = |why: String| Err(ImageError::Blob { digest: descriptor.digest.clone(), why });
    if size != descriptor.size {
        return fail(format!("size {size}, the descriptor says {}", descriptor.size));
    }
    if digest != descriptor.digest {
        return fail(format!("digest mismatch: the content is {digest}"));
    }
    Ok(())
}

/// A reader that hashes (SHA-256) and counts what passes through.
struct Hashing<'a, R> {
    inner: R,
    context: &'a mut Context,
    count: &'a mut u64,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.context.update(&buf[..n]);
        *self.count += n as u64;
        Ok(n)
    }
}

/// Applies one layer to `root`, checking the blob's size and digest and,
/// if given, the digest of its uncompressed tar (`diff_id`).
fn apply_layer(layout: &Path, layer: &Descriptor, diff_id: Option<&str>, root: &Path) -> Result<(), ImageError> {
    let media_type = layer.media_type.as_deref().unwrap_or("application/vnd.oci.image.layer.v1.tar");
    let gzip = match media_type {
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => false,
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip"
        | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => true,
        other => {
            return Err(ImageError::MediaType { media_type: other.to_owned(), digest: layer.digest.clone() });
        }
    };
    let path = blob_path(layout, &layer.digest)?;
    let file = fs::File::open(&path).map_err(io_error(&path))?;
    let (mut blob_hash, mut blob_size) = (Context::new(&SHA256), 0u64);
    let (mut tar_hash, mut tar_size) = (Context::new(&SHA256), 0u64);
    {
        let raw = Hashing { inner: BufReader::new(file), context: &mut blob_hash, count: &mut blob_size };
        let stream: Box<dyn Read + '_> =
            if gzip { Box::new(flate2::read::MultiGzDecoder::new(raw)) } else { Box::new(raw) };
        let tar_stream = Hashing { inner: stream, context: &mut tar_hash, count: &mut tar_size };
        let mut archive = tar::Archive::new(tar_stream);
        apply_entries(&mut archive, root, &layer.digest)?;
        // The end-of-archive blocks, and for gzip its trailer, count too.
        io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(io_error(&path))?;
    }
    check_blob(layer, blob_size, &format!("sha256:{}", hex(blob_hash.finish().as_ref())))?;
    let tar_digest = format!("sha256:{}", hex(tar_hash.finish().as_ref()));
    if let Some(want) = diff_id
        && want != tar_digest
    {
        let why = format!("the uncompressed layer is {tar_digest}, the config's diff_id is {want}");
        return Err(ImageError::Blob { digest: layer.digest.clone(), why });
    }
    Ok(())
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Unpacks the entries of one layer over `root`.
fn apply_entries<R: Read>(archive: &mut tar::Archive<R>, root: &Path, layer: &str) -> Result<(), ImageError> {
    let entry_error =
        |path: &Path, why: String| ImageError::Entry { layer: layer.to_owned(), path: path.display().to_string(), why };
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    // Without root, files can only be the agent's own.
    archive.set_preserve_ownerships(nix::unistd::geteuid().is_root());
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let canonical_root = root.canonicalize().map_err(io_error(root))?;
    // What this layer put there: its own whiteouts do not remove it.
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    let entries = archive.entries().map_err(io_error(root))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| entry_error(Path::new("?"), e.to_string()))?;
        let path = entry.path().map_err(|e| entry_error(Path::new("?"), e.to_string()))?.into_owned();
        let Some(relative) = relative_path(&path) else {
            return Err(entry_error(&path, "leaves the root (`..`)".to_owned()));
        };
        let Some(name) = relative.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue; // the root itself
        };
        let parent = relative.parent().unwrap_or(Path::new("")).to_owned();
        let inside = |dir: &Path| -> Result<bool, ImageError> {
            match root.join(dir).canonicalize() {
                Ok(canonical) if canonical.starts_with(&canonical_root) => Ok(true),
                Ok(_) => Err(entry_error(&path, "is under a symlink that leaves the root".to_owned())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(entry_error(&path, e.to_string())),
            }
        };
        if name == OPAQUE {
            if inside(&parent)? {
                let dir = root.join(&parent);
                if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                    for child in fs::read_dir(&dir).map_err(io_error(&dir))? {
                        let child = child.map_err(io_error(&dir))?;
                        let child_relative = parent.join(child.file_name());
                        if !this_layer.iter().any(|p| p.starts_with(&child_relative)) {
                            remove(&child.path())?;
                        }
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            // `.wh..wh.*` other than the opaque marker are aufs metadata.
            let hidden_relative = parent.join(hidden);
            if !hidden.starts_with(WHITEOUT) && !this_layer.contains(&hidden_relative) && inside(&parent)? {
                remove(&root.join(&hidden_relative))?;
            }
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_character_special() || kind.is_block_special() || kind.is_fifo() {
            tracing::debug!(layer, path = %path.display(), "device or FIFO in a layer; skipped");
            continue;
        }
        // What a lower layer has there goes, unless both are directories.
        let dst = root.join(&relative);
        if inside(&parent)?
            && let Ok(existing) = fs::symlink_metadata(&dst)
            && !(existing.is_dir() && kind.is_dir())
        {
            remove(&dst)?;
        }
        let unpacked = entry.unpack_in(root).map_err(|e| entry_error(&path, with_causes(&e)))?;
        if !unpacked {
            return Err(entry_error(&path, "leaves the root".to_owned()));
        }
        this_layer.insert(relative);
    }
    Ok(())
}

/// An error and its causes, `: `-separated (tar's errors say what failed
/// on top and why underneath).
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// `path` of a tar entry relative to the root (leading `/` and `.`
/// dropped); `None` if it has a `..` component.
fn relative_path(path: &Path) -> Option<PathBuf> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => return None,
        }
    }
    Some(relative)
}

/// Removes a file, a symlink (not what it points to) or a directory tree.
fn remove(path: &Path) -> Result<(), ImageError> {
    let removed = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.map_err(io_error(path))
}

/// Where `path` (as the container sees it) is under `root`, following
/// symlinks as if `root` were `/`: an absolute symlink starts again at
/// `root`, and `..` never goes above it. Components that do not exist are
/// kept as written. The result is always inside `root` (while nothing else
/// changes the tree meanwhile).
pub fn path_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    fn parts(path: &Path) -> VecDeque<OsString> {
        path.components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(p.to_owned()),
                Component::ParentDir => Some(OsString::from("..")),
                _ => None,
            })
            .collect()
    }
    let mut pending = parts(Path::new(path));
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let on_disk = root.join(&candidate);
        match fs::symlink_metadata(&on_disk) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(io::Error::other(format!("too many levels of symbolic links in {path}")));
                }
                let target = fs::read_link(&on_disk)?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut next = parts(&target);
                next.extend(pending);
                pending = next;
            }
            _ => resolved = candidate,
        }
    }
    Ok(root.join(resolved))
}

/// The text of `path` in the image's root filesystem (symlinks resolved
/// inside it), empty if there is no such file.
pub fn read_in_root(root: &Path, path: &str) -> io::Result<String> {
    match fs::read(path_in_root(root, path)?) {
        Ok(data) => Ok(String::from_utf8_lossy(&data).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// One entry of a test layer.
    pub(crate) enum Item<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a [u8], u32),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
    }

    /// A tar layer of `items` (owned by the test's own user).
    pub(crate) fn mk_tar(items: &[Item<'_>]) -> Vec<u8> {
        let (uid, gid) = (nix::unistd::geteuid().as_raw(), nix::unistd::getegid().as_raw());
        let mut builder = tar::Builder::new(Vec::new());
        for item in items {
            let mut header = tar::Header::new_gnu();
            header.set_uid(uid.into());
            header.set_gid(gid.into());
            header.set_mtime(1_700_000_000);
            match item {
                Item::Dir(path, mode) => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, path, io::empty()).unwrap();
                }
                Item::File(path, data, mode) => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    builder.append_data(&mut header, path, *data).unwrap();
                }
                Item::Symlink(path, target) => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(0o777);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).unwrap();
                }
                Item::HardLink(path, target) => {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_mode(0o644);
                    header.set_size(0);
                    builder.append_link(&mut header, path, target).unwrap();
                }
            }
        }
        builder.into_inner().unwrap()
    }

    /// A tar with one raw entry named `path` (bypassing the builder's checks).
    fn mk_raw_tar(path: &str, data: &[u8]) -> Vec<u8> {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        header.set_mode(0o644);
        header.set_size(data.len() as u64);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let mut out = header.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
        out
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn write_blob(layout: &Path, data: &[u8]) -> String {
        let digest = sha256(data);
        let dir = layout.join("blobs/sha256");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(&digest["sha256:".len()..]), data).unwrap();
        digest
    }

    /// Writes an image (gzip layers from `layers`, config `config`) into
    /// `layout` and adds it to its index with `annotations`; returns the
    /// manifest's digest.
    pub(crate) fn mk_image(
        layout: &Path,
        layers: &[Vec<u8>],
        config: serde_json::Value,
        annotations: serde_json::Value,
    ) -> String {
        fs::create_dir_all(layout).unwrap();
        fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut layer_descriptors = Vec::new();
        let mut diff_ids = Vec::new();
        for layer in layers {
            let compressed = gzip(layer);
            diff_ids.push(sha256(layer));
            let digest = write_blob(layout, &compressed);
            layer_descriptors.push(json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest, "size": compressed.len()
            }));
        }
        let config = serde_json::to_vec(&json!({
            "architecture": platform_arch(), "os": "linux", "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}
        }))
        .unwrap();
        let config_digest = write_blob(layout, &config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": layer_descriptors
        }))
        .unwrap();
        let digest = write_blob(layout, &manifest);
        let index_path = layout.join("index.json");
        let mut index: serde_json::Value = fs::read(&index_path)
            .map(|t| serde_json::from_slice(&t).unwrap())
            .unwrap_or_else(|_| json!({"schemaVersion": 2, "manifests": []}));
        index["manifests"].as_array_mut().unwrap().push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": manifest.len(), "annotations": annotations
        }));
        fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
        digest
    }

    pub(crate) fn temp_dir(name: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "agimo-image-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn named(name: &str) -> serde_json::Value {
        let tag = name.rsplit(':').next().unwrap();
        json!({NAME_ANNOTATION: name, REF_NAME_ANNOTATION: tag})
    }

    #[test]
    fn normalises_references_as_containerd_does() {
        let parse = |s: &str| Reference::parse(s).unwrap().to_string();
        assert_eq!(parse("nginx"), "docker.io/library/nginx:latest");
        assert_eq!(parse("nginx:1.27"), "docker.io/library/nginx:1.27");
        assert_eq!(parse("index.docker.io/library/nginx"), "docker.io/library/nginx:latest");
        assert_eq!(parse("bitnami/redis:7"), "docker.io/bitnami/redis:7");
        assert_eq!(parse("ghcr.io/agimo-dev/agimo:0.1.0"), "ghcr.io/agimo-dev/agimo:0.1.0");
        assert_eq!(parse("localhost/app"), "localhost/app:latest");
        assert_eq!(parse("localhost:5000/app:v1"), "localhost:5000/app:v1");
        assert_eq!(parse("registry.k8s.io/pause:3.10"), "registry.k8s.io/pause:3.10");
        let digest = format!("sha256:{}", "a".repeat(64));
        assert_eq!(parse(&format!("ghcr.io/x/y@{digest}")), format!("ghcr.io/x/y@{digest}"));
        assert_eq!(parse(&format!("y:1@{digest}")), format!("docker.io/library/y:1@{digest}"));
        for bad in ["", "Nginx", "nginx:", "nginx:-x", "x@sha256:abc", "a//b", "-a"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} is not a reference");
        }
        // A program pattern of the node agent is a reference too.
        assert_eq!(parse("agimo-node-agent/test-shell"), "docker.io/agimo-node-agent/test-shell:latest");
    }

    #[test]
    fn finds_images_by_name_tag_and_digest() {
        let layout = temp_dir("find");
        let tar = mk_tar(&[Item::File("a", b"1", 0o644)]);
        let one = mk_image(&layout, std::slice::from_ref(&tar), json!({}), named("ghcr.io/agimo-dev/agimo:0.1.0"));
        let two = mk_image(&layout, &[tar], json!({"Env": ["V=2"]}), named("docker.io/library/busybox:latest"));
        // Only a bare tag: names no repository.
        mk_image(&layout, &[], json!({}), json!({REF_NAME_ANNOTATION: "0.2.0"}));
        let store = ImageStore::new(vec![layout.join("missing"), layout.clone()], layout.join("cache"));
        let digest = |image: &str| store.find(image).map(|f| f.descriptor.digest);
        assert_eq!(digest("ghcr.io/agimo-dev/agimo:0.1.0"), Some(one.clone()));
        assert_eq!(digest("ghcr.io/agimo-dev/agimo:0.2.0"), None);
        assert_eq!(digest("ghcr.io/agimo-dev/agimo"), None, "no :latest");
        assert_eq!(digest("busybox"), Some(two.clone()));
        assert_eq!(digest(&format!("ghcr.io/agimo-dev/agimo@{one}")), Some(one.clone()));
        assert_eq!(digest(&format!("ghcr.io/agimo-dev/agimo:9@{one}")), Some(one.clone()), "the digest decides");
        assert_eq!(digest(&format!("ghcr.io/agimo-dev/other@{one}")), None);
        assert_eq!(digest(&format!("busybox@{one}")), None);
        assert_eq!(digest("echo-basic"), None);
        let pulled = store.pull(&store.find("busybox").unwrap()).unwrap();
        assert_eq!(pulled.image_id, format!("docker.io/library/busybox@{two}"));
        assert_eq!(pulled.config.env, Some(vec!["V=2".to_owned()]));
        assert!(!pulled.cached);
        fs::remove_dir_all(&layout).unwrap();
    }

    #[test]
    fn unpacks_once_and_reuses_the_root_filesystem() {
        let layout = temp_dir("cache");
        let layer = mk_tar(&[
            Item::Dir("etc/", 0o755),
            Item::File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644),
            Item::File("bin/tool", b"#!/bin/sh\n", 0o4755),
            Item::Symlink("usr/bin", "/bin"),
            Item::HardLink("bin/same-tool", "bin/tool"),
            Item::Dir("tmp/", 0o1777),
        ]);
        mk_image(&layout, &[layer], json!({"User": "0"}), named("example.test/app:1"));
        let store = ImageStore::new(vec![layout.clone()], layout.join("cache"));
        let found = store.find("example.test/app:1").unwrap();
        let pulled = store.pull(&found).unwrap();
        let root = &pulled.rootfs;
        assert!(root.ends_with(format!("sha256-{}/rootfs", &pulled.manifest["sha256:".len()..])));
        use std::os::unix::fs::MetadataExt;
        let meta = |p: &str| fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(meta("bin/tool").mode() & 0o7777, 0o4755, "setuid bit kept");
        assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
        assert_eq!(meta("").mode() & 0o777, 0o755);
        assert_eq!(fs::read_link(root.join("usr/bin")).unwrap(), Path::new("/bin"));
        assert_eq!(meta("bin/same-tool").ino(), meta("bin/tool").ino(), "a hard link");
        assert_eq!(meta("bin/tool").nlink(), 2);
        let again = store.pull(&found).unwrap();
        assert!(again.cached && again.rootfs == pulled.rootfs);
        // No temporary directories are left.
        let names: Vec<String> = fs::read_dir(layout.join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [format!("sha256-{}", &pulled.manifest["sha256:".len()..])]);
        fs::remove_dir_all(&layout).unwrap();
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers() {
        let layout = temp_dir("whiteout");
        let lower = mk_tar(&[
            Item::File("etc/keep", b"k", 0o644),
            Item::File("etc/gone", b"g", 0o644),
            Item::File("var/cache/old/a", b"a", 0o644),
            Item::File("var/cache/old-file", b"b", 0o644),
            Item::File("opt/app/one", b"1", 0o644),
            Item::File("file-then-dir", b"f", 0o644),
            Item::Dir("dir-then-file/", 0o755),
            Item::File("dir-then-file/inner", b"i", 0o644),
            Item::File("srv/old", b"o", 0o644),
        ]);
        let upper = mk_tar(&[
            Item::File("etc/.wh.gone", b"", 0o644),
            Item::Dir("var/cache/", 0o755),
            Item::File("var/cache/.wh..wh..opq", b"", 0o644),
            Item::File("var/cache/new", b"n", 0o644),
            Item::File("opt/app/.wh.missing", b"", 0o644),
            Item::File("opt/.wh.app", b"", 0o644),
            Item::Dir("file-then-dir/", 0o755),
            Item::File("dir-then-file", b"now a file", 0o644),
            // The marker after what the layer puts there.
            Item::File("srv/new", b"n", 0o644),
            Item::File("srv/.wh..wh..opq", b"", 0o644),
        ]);
        mk_image(&layout, &[lower, upper], json!({}), named("example.test/layers:1"));
        let store = ImageStore::new(vec![layout.clone()], layout.join("cache"));
        let root = store.pull(&store.find("example.test/layers:1").unwrap()).unwrap().rootfs;
        let exists = |p: &str| fs::symlink_metadata(root.join(p)).is_ok();
        assert!(exists("etc/keep") && !exists("etc/gone") && !exists("etc/.wh.gone"));
        assert!(exists("var/cache/new"));
        assert!(!exists("var/cache/old") && !exists("var/cache/old-file") && !exists("var/cache/.wh..wh..opq"));
        assert!(!exists("opt/app") && exists("opt"));
        assert!(exists("srv/new") && !exists("srv/old"));
        assert!(root.join("file-then-dir").is_dir());
        assert_eq!(fs::read(root.join("dir-then-file")).unwrap(), b"now a file");
        fs::remove_dir_all(&layout).unwrap();
    }

    #[test]
    fn entries_that_leave_the_root_are_refused() {
        let outside = temp_dir("outside");
        let target = outside.display().to_string();
        let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
            ("dot-dot", vec![mk_raw_tar("a/../../escaped", b"x")]),
            // A symlink to an absolute host path, then a file written through it.
            ("symlink", vec![mk_tar(&[Item::Symlink("evil", &target), Item::File("evil/escaped", b"x", 0o644)])]),
            (
                "symlink-in-lower-layer",
                vec![mk_tar(&[Item::Symlink("evil", &target)]), mk_tar(&[Item::File("evil/escaped", b"x", 0o644)])],
            ),
            (
                "relative-symlink",
                vec![mk_tar(&[Item::Symlink("up", "../../../../../.."), Item::HardLink("h", "up/etc/passwd")])],
            ),
            (
                "whiteout-through-symlink",
                vec![mk_tar(&[Item::Symlink("evil", &target)]), mk_tar(&[Item::File("evil/.wh.keep", b"", 0o644)])],
            ),
        ];
        fs::write(outside.join("keep"), b"host file").unwrap();
        for (name, layers) in cases {
            let layout = temp_dir("escape");
            mk_image(&layout, &layers, json!({}), named("example.test/escape:1"));
            let store = ImageStore::new(vec![layout.clone()], layout.join("cache"));
            let err = store.pull(&store.find("example.test/escape:1").unwrap()).unwrap_err();
            assert!(matches!(err, ImageError::Entry { .. }), "{name}: {err}");
            let message = err.to_string();
            assert!(
                message.contains("leaves the root") || message.contains("outside of destination"),
                "{name}: {message}"
            );
            assert!(!outside.join("escaped").exists(), "{name}");
            assert!(outside.join("keep").exists(), "{name}");
            // Nothing half unpacked is left to be used.
            assert!(fs::read_dir(layout.join("cache")).unwrap().next().is_none(), "{name}");
            fs::remove_dir_all(&layout).unwrap();
        }
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn corrupt_blobs_are_refused() {
        let layout = temp_dir("corrupt");
        let layer = mk_tar(&[Item::File("a", b"1", 0o644)]);
        mk_image(&layout, &[layer], json!({}), named("example.test/corrupt:1"));
        let store = ImageStore::new(vec![layout.clone()], layout.join("cache"));
        let found = store.find("example.test/corrupt:1").unwrap();
        // Same size, different content: the layer blob (the largest).
        let mut blobs: Vec<PathBuf> =
            fs::read_dir(layout.join("blobs/sha256")).unwrap().map(|e| e.unwrap().path()).collect();
        blobs.sort_by_key(|p| fs::metadata(p).unwrap().len());
        let layer_blob = blobs.iter().find(|p| fs::read(p).unwrap().starts_with(&[0x1f, 0x8b])).unwrap().clone();
        let mut data = fs::read(&layer_blob).unwrap();
        // The gzip header's modification time: the layer still unpacks.
        data[4] ^= 0xff;
        fs::write(&layer_blob, &data).unwrap();
        let err = store.pull(&found).unwrap_err().to_string();
        assert!(err.contains("digest mismatch: the content is sha256:"), "{err}");
        // A manifest that does not match its digest.
        let manifest = layout.join("blobs/sha256").join(&found.descriptor.digest["sha256:".len()..]);
        let mut text = fs::read(&manifest).unwrap();
        text.push(b' ');
        let mut found = found.clone();
        fs::write(&manifest, &text).unwrap();
        found.descriptor.size += 1;
        let err = store.pull(&found).unwrap_err().to_string();
        assert!(err.contains("digest mismatch: the content is sha256:"), "{err}");
        fs::remove_dir_all(&layout).unwrap();
    }

    #[test]
    fn image_indexes_pick_this_platform() {
        let layout = temp_dir("index");
        let digest = mk_image(&layout, &[mk_tar(&[Item::File("a", b"1", 0o644)])], json!({"Cmd": ["x"]}), json!({}));
        let manifest = fs::read(layout.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap();
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": sha256(b"other"), "size": 5,
                 "platform": {"os": "linux", "architecture": "s390x"}},
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": manifest.len(),
                 "platform": {"os": "linux", "architecture": platform_arch()}}
            ]
        }))
        .unwrap();
        let index_digest = write_blob(&layout, &index);
        fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json", "digest": index_digest, "size": index.len(),
                "annotations": named("example.test/multi:1")
            }]}))
            .unwrap(),
        )
        .unwrap();
        let store = ImageStore::new(vec![layout.clone()], layout.join("cache"));
        let pulled = store.pull(&store.find("example.test/multi:1").unwrap()).unwrap();
        assert_eq!(pulled.manifest, digest);
        assert_eq!(pulled.image_id, format!("example.test/multi@{index_digest}"));
        assert_eq!(pulled.config.cmd, Some(vec!["x".to_owned()]));
        fs::remove_dir_all(&layout).unwrap();
    }

    #[test]
    fn paths_resolve_inside_the_root() {
        let root = temp_dir("resolve");
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("/usr/lib", root.join("lib")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("usr/lib/up")).unwrap();
        std::os::unix::fs::symlink("/etc/host-file", root.join("escape")).unwrap();
        let resolve = |p: &str| path_in_root(&root, p).unwrap();
        assert_eq!(resolve("/lib/x"), root.join("usr/lib/x"));
        assert_eq!(resolve("/usr/lib/up/etc"), root.join("etc"));
        assert_eq!(resolve("/usr/lib/up/usr/lib/up/../../x"), root.join("x"));
        assert_eq!(resolve("/escape"), root.join("etc/host-file"));
        assert_eq!(resolve("/../../x"), root.join("x"));
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(path_in_root(&root, "/loop").is_err());
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/host-file"), "inside").unwrap();
        assert_eq!(read_in_root(&root, "/escape").unwrap(), "inside");
        assert_eq!(read_in_root(&root, "/etc/none").unwrap(), "");
        fs::remove_dir_all(&root).unwrap();
    }
}

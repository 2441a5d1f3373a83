//! SCXML documents: fetched (documents directory or http/https), validated and compiled
//! once, and stored by content hash as a self-contained bundle (the text plus every
//! resource it loaded through `src`), so a restarted node can restore sessions even when
//! the original URLs are gone.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ors_scxml::compile::{CompileOptions, Limits, Loader};
use ors_scxml::model::{InvokeContent, StateId};
use ors_scxml::{CompileError, Document};
use ors_store::SessionStore;

use crate::outbound::OutboundPolicy;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::RuntimeError;

#[derive(Serialize, Deserialize)]
struct Bundle {
    source: String,
    text: String,
    resources: BTreeMap<String, String>,
}

pub(crate) struct Documents {
    store: Arc<dyn SessionStore>,
    dir: Option<PathBuf>,
    http: reqwest::Client,
    outbound: Arc<OutboundPolicy>,
    max_bytes: usize,
    by_hash: Mutex<HashMap<String, Arc<Document>>>,
}

/// Serves `src` from what was fetched before compiling, and records what is missing.
struct Prefetched<'a> {
    have: &'a BTreeMap<String, String>,
    missing: RefCell<BTreeSet<String>>,
}

impl Loader for Prefetched<'_> {
    fn load(&self, uri: &str) -> Result<String, String> {
        match self.have.get(uri) {
            Some(t) => Ok(t.clone()),
            None => {
                self.missing.borrow_mut().insert(uri.to_string());
                Err(format!("\"{uri}\" was not fetched"))
            }
        }
    }
}

fn invalid(e: CompileError) -> RuntimeError {
    RuntimeError::InvalidDocument(e.diagnostics)
}

impl Documents {
    pub fn new(
        store: Arc<dyn SessionStore>,
        dir: Option<PathBuf>,
        max_bytes: usize,
        timeout: Duration,
        outbound: Arc<OutboundPolicy>,
    ) -> Self {
        let http = outbound
            .client_builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .expect("an HTTP client with default TLS settings");
        Documents {
            store,
            dir: dir.and_then(|d| d.canonicalize().ok()),
            http,
            outbound,
            max_bytes,
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `uri` against `base` (a file path or URL) into something fetchable.
    fn resolve(&self, uri: &str, base: Option<&str>) -> Result<String, RuntimeError> {
        if uri.starts_with("http://") || uri.starts_with("https://") {
            return Ok(uri.to_string());
        }
        if let Some(b) = base.filter(|b| b.starts_with("http://") || b.starts_with("https://")) {
            let base = reqwest::Url::parse(b)
                .map_err(|e| RuntimeError::BadRequest(format!("{b}: {e}")))?;
            return base
                .join(uri)
                .map(|u| u.to_string())
                .map_err(|e| RuntimeError::BadRequest(format!("{uri}: {e}")));
        }
        let rel = uri
            .strip_prefix("file://")
            .or_else(|| uri.strip_prefix("file:"))
            .unwrap_or(uri);
        if rel.contains("://") {
            return Err(RuntimeError::BadRequest(format!(
                "unsupported URL scheme in \"{uri}\""
            )));
        }
        let dir = self.dir.as_ref().ok_or_else(|| {
            RuntimeError::BadRequest(
                "no documents directory is configured for file documents".into(),
            )
        })?;
        let base_dir = base.map(Path::new).and_then(Path::parent).unwrap_or(dir);
        let p = if Path::new(rel).is_absolute() {
            PathBuf::from(rel)
        } else {
            base_dir.join(rel)
        };
        let p = p
            .canonicalize()
            .map_err(|e| RuntimeError::BadRequest(format!("document \"{uri}\": {e}")))?;
        if !p.starts_with(dir) {
            return Err(RuntimeError::BadRequest(format!(
                "document \"{uri}\" is outside the documents directory"
            )));
        }
        Ok(p.display().to_string())
    }

    async fn fetch(&self, location: &str) -> Result<String, RuntimeError> {
        if location.starts_with("http://") || location.starts_with("https://") {
            self.outbound
                .check(location)
                .map_err(|e| RuntimeError::BadRequest(format!("cannot fetch {e}")))?;
            let resp =
                self.http.get(location).send().await.map_err(|e| {
                    RuntimeError::BadRequest(format!("cannot fetch {location}: {e}"))
                })?;
            if !resp.status().is_success() {
                return Err(RuntimeError::BadRequest(format!(
                    "cannot fetch {location}: HTTP {}",
                    resp.status()
                )));
            }
            if resp
                .content_length()
                .is_some_and(|n| n as usize > self.max_bytes)
            {
                return Err(RuntimeError::TooLarge(format!(
                    "{location} is larger than {} bytes",
                    self.max_bytes
                )));
            }
            let body = resp
                .bytes()
                .await
                .map_err(|e| RuntimeError::BadRequest(format!("cannot fetch {location}: {e}")))?;
            if body.len() > self.max_bytes {
                return Err(RuntimeError::TooLarge(format!(
                    "{location} is larger than {} bytes",
                    self.max_bytes
                )));
            }
            return String::from_utf8(body.to_vec())
                .map_err(|_| RuntimeError::BadRequest(format!("{location} is not UTF-8 text")));
        }
        let meta = tokio::fs::metadata(location)
            .await
            .map_err(|e| RuntimeError::BadRequest(format!("{location}: {e}")))?;
        if meta.len() as usize > self.max_bytes {
            return Err(RuntimeError::TooLarge(format!(
                "{location} is larger than {} bytes",
                self.max_bytes
            )));
        }
        tokio::fs::read_to_string(location)
            .await
            .map_err(|e| RuntimeError::BadRequest(format!("{location}: {e}")))
    }

    fn compile_bundle(
        &self,
        b: &Bundle,
        loader: &dyn Loader,
    ) -> Result<Arc<Document>, CompileError> {
        let opts = CompileOptions {
            source_name: &b.source,
            limits: Limits {
                max_bytes: self.max_bytes,
                ..Limits::default()
            },
            loader,
            syntax: None,
        };
        ors_scxml::compile(&b.text, &opts)
    }

    /// Fetches, compiles and stores the document `src` names. Returns its hash.
    pub async fn load(&self, src: &str) -> Result<(String, Arc<Document>), RuntimeError> {
        let location = self.resolve(src, None)?;
        let text = self.fetch(&location).await?;
        self.compile_text(src, Some(&location), text).await
    }

    /// Compiles document text (from `<invoke><content expr>`), fetching what it names.
    pub async fn compile_text(
        &self,
        source: &str,
        location: Option<&str>,
        text: String,
    ) -> Result<(String, Arc<Document>), RuntimeError> {
        let mut bundle = Bundle {
            source: source.to_string(),
            text,
            resources: BTreeMap::new(),
        };
        // Compile, fetch what the compiler asked for, and compile again (resources can't
        // name further resources, so two rounds suffice).
        for round in 0..2 {
            let loader = Prefetched {
                have: &bundle.resources,
                missing: RefCell::new(BTreeSet::new()),
            };
            let result = self.compile_bundle(&bundle, &loader);
            let missing = loader.missing.into_inner();
            if missing.is_empty() || round == 1 {
                let doc = result.map_err(invalid)?;
                let bytes = serde_json::to_vec(&bundle).expect("strings serialise");
                let digest: String = Sha256::digest(&bytes)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let hash = format!("sha256-{digest}");
                self.store.put_document(&hash, &bytes).await?;
                let doc = self
                    .by_hash
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(hash.clone())
                    .or_insert(doc)
                    .clone();
                return Ok((hash, doc));
            }
            for uri in missing {
                // A resource that cannot be fetched stays missing: <data src> then raises
                // error.execution at run time, <script src> rejects the document.
                if let Ok(loc) = self.resolve(&uri, location)
                    && let Ok(text) = self.fetch(&loc).await
                {
                    bundle.resources.insert(uri, text);
                }
            }
        }
        unreachable!("the loop returns in its second round")
    }

    /// The document stored under `hash` (`<parent hash>#<state>/<n>` names an inline
    /// `<invoke><content>` document of a stored one).
    pub async fn get(&self, hash: &str) -> Result<Arc<Document>, RuntimeError> {
        if let Some(d) = self
            .by_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
        {
            return Ok(d.clone());
        }
        if let Some((parent, path)) = hash.rsplit_once('#') {
            let doc = Box::pin(self.get(parent)).await?;
            let inline = inline_document(&doc, path).ok_or_else(|| {
                RuntimeError::Internal(format!("document {hash} has no such inline document"))
            })?;
            self.by_hash
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(hash.to_string(), inline.clone());
            return Ok(inline);
        }
        let bytes = self.store.get_document(hash).await?.ok_or_else(|| {
            RuntimeError::Internal(format!("document {hash} is not in the store"))
        })?;
        let bundle: Bundle = serde_json::from_slice(&bytes).map_err(|e| {
            RuntimeError::Internal(format!("stored document {hash} is corrupt: {e}"))
        })?;
        let loader = Prefetched {
            have: &bundle.resources,
            missing: RefCell::new(BTreeSet::new()),
        };
        let doc = self.compile_bundle(&bundle, &loader).map_err(|e| {
            RuntimeError::Internal(format!("stored document {hash} no longer compiles: {e}"))
        })?;
        self.by_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_string(), doc.clone());
        Ok(doc)
    }

    /// Registers an inline child document under its derived hash.
    pub fn remember(&self, hash: &str, doc: Arc<Document>) {
        self.by_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_string(), doc);
    }
}

/// The path of an inline `<invoke>` document: `<state index>/<invoke index in state>`.
pub(crate) fn inline_path(doc: &Document, target: &Arc<Document>) -> Option<String> {
    for (i, st) in doc.states.iter().enumerate() {
        for (j, inv) in st.invokes.iter().enumerate() {
            if let InvokeContent::Document(d) = &inv.content
                && Arc::ptr_eq(d, target)
            {
                return Some(format!("{i}/{j}"));
            }
        }
    }
    None
}

fn inline_document(doc: &Document, path: &str) -> Option<Arc<Document>> {
    let (s, j) = path.split_once('/')?;
    let s: StateId = s.parse().ok()?;
    let j: usize = j.parse().ok()?;
    match &doc.states.get(s as usize)?.invokes.get(j)?.content {
        InvokeContent::Document(d) => Some(d.clone()),
        _ => None,
    }
}

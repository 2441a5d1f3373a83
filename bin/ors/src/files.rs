//! Documents and `src` resources from the file system, for the in-process host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ors_scxml::compile::{CompileOptions, Loader, SyntaxCheck};
use ors_scxml::host::SessionFactory;
use ors_scxml::{Datamodel, Document, SystemVars};

/// Resolves `file:` URIs and plain paths relative to a base directory. Anything else
/// (`http:` ...) is refused: the in-process host does no network I/O.
pub struct FileLoader {
    pub base: PathBuf,
}

impl FileLoader {
    pub fn for_document(path: &Path) -> FileLoader {
        FileLoader {
            base: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        }
    }

    pub fn resolve(&self, uri: &str) -> Result<PathBuf, String> {
        let p = uri
            .strip_prefix("file://")
            .or_else(|| uri.strip_prefix("file:"))
            .unwrap_or(uri);
        if p.contains("://") {
            return Err(format!(
                "cannot load \"{uri}\": only files are supported here"
            ));
        }
        Ok(self.base.join(p))
    }
}

impl Loader for FileLoader {
    fn load(&self, uri: &str) -> Result<String, String> {
        let p = self.resolve(uri)?;
        std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))
    }
}

/// Why a document file could not be used.
#[derive(Debug)]
pub enum FileError {
    /// It could not be read (the message names the file).
    Read(String),
    /// It was read and rejected, with every problem found.
    Compile(ors_scxml::CompileError),
}

impl std::fmt::Display for FileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileError::Read(e) => f.write_str(e),
            FileError::Compile(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for FileError {}

impl From<FileError> for String {
    fn from(e: FileError) -> String {
        e.to_string()
    }
}

/// Compiles a document file; `syntax` turns malformed expressions into errors.
pub fn compile_file(
    path: &Path,
    syntax: Option<&dyn SyntaxCheck>,
) -> Result<Arc<Document>, FileError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| FileError::Read(format!("{}: {e}", path.display())))?;
    let loader = FileLoader::for_document(path);
    let name = path.display().to_string();
    let opts = CompileOptions {
        source_name: &name,
        loader: &loader,
        syntax,
        ..Default::default()
    };
    ors_scxml::compile(&text, &opts).map_err(FileError::Compile)
}

/// A [`SessionFactory`] for documents on disk with the ECMAScript (or null) datamodel.
pub struct FileFactory {
    pub loader: FileLoader,
}

impl SessionFactory for FileFactory {
    fn datamodel(&self, doc: &Arc<Document>, vars: &SystemVars) -> Box<dyn Datamodel> {
        ors_ecmascript::datamodel_for(doc, vars)
    }
    fn load(&self, uri: &str) -> Result<Arc<Document>, String> {
        Ok(compile_file(&self.loader.resolve(uri)?, None)?)
    }
    fn compile(&self, text: &str) -> Result<Arc<Document>, String> {
        let opts = CompileOptions {
            source_name: "<invoke content>",
            loader: &self.loader,
            ..Default::default()
        };
        ors_scxml::compile(text, &opts).map_err(|e| e.to_string())
    }
}

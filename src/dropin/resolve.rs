//! Which drop-in each passed socket comes from, and so which name it
//! carries, when systemd passed several sockets under one name.
//!
//! systemd keeps one `FileDescriptorName=` per socket unit (the last one
//! read) but one port per `Listen*=` line, merged across the unit file and
//! its drop-ins in the order they are read; an empty `Listen*=` removes
//! every port before it. It passes the fds in the order of that list
//! (`socket_collect_fds()` walks the unit's port list, each line appended
//! at its tail by `config_parse_socket_listen()`). So each fd is matched
//! twice: by its bound address to the lines that declare it, and by its
//! position to the merged list; both must name the same file, or nothing
//! is decided.

use crate::sys::socket::SockAddr;

use super::listen::ListenAddr;
use super::specifier::{self, Specifiers};
use super::syntax::{self, ListenKind, Setting};

/// The longest name systemd accepts in `FileDescriptorName=`.
const MAX_FDNAME: usize = 255;

/// One port a `Listen*=` line declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub line: usize,
    /// The address of a stream socket; `None` for the other kinds, whose
    /// fds are never the stream sockets we serve but take a position.
    pub stream: Option<ListenAddr>,
}

/// A setting of one file, specifiers expanded and addresses parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Port(Port),
    /// An empty `Listen*=`.
    Reset,
    /// `FileDescriptorName=`; `None`: back to the unit's name.
    FdName(Option<String>),
}

/// One file of the unit, in the order systemd reads them: the unit file,
/// then the drop-ins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// How messages name it: a drop-in's file name, the unit file's path.
    pub label: String,
    pub entries: Vec<Entry>,
}

/// systemd's `fdname_is_valid()`.
fn fdname_valid(name: &str) -> bool {
    name.len() <= MAX_FDNAME
        && name
            .bytes()
            .all(|b| (b' '..=b'~').contains(&b) && b != b':')
}

impl Source {
    /// Reads a unit file or drop-in: its `[Socket]` settings, expanded as
    /// systemd expands them. Refuses a line systemd would read otherwise, or
    /// whose ports cannot be counted.
    pub fn read(label: &str, text: &str, values: &Specifiers) -> Result<Source, String> {
        let at = |line: usize, e: String| format!("{label} line {line}: {e}");
        let mut entries = Vec::new();
        for syntax::Line { number, setting } in
            syntax::parse(text).map_err(|e| format!("{label}: {e}"))?
        {
            let expand = |v: &str| specifier::expand(v, values).map_err(|e| at(number, e));
            let entry = match setting {
                Setting::ListenReset => Entry::Reset,
                Setting::FdName(v) if v.is_empty() => Entry::FdName(None),
                Setting::FdName(v) => {
                    let name = expand(&v)?;
                    if !fdname_valid(&name) {
                        return Err(at(
                            number,
                            format!("FileDescriptorName={name:?} is not valid"),
                        ));
                    }
                    Entry::FdName(Some(name))
                }
                Setting::Listen(ListenKind::UsbFunction, _) => {
                    return Err(at(
                        number,
                        "ListenUSBFunction= passes fds that cannot be counted".into(),
                    ));
                }
                Setting::Listen(kind, v) => {
                    let value = expand(&v)?;
                    let parsed = |v: &str| ListenAddr::parse(v).map_err(|e| at(number, e));
                    let stream = match kind {
                        ListenKind::Stream => Some(parsed(&value)?),
                        // systemd ignores a ListenSequentialPacket= that is
                        // not a Unix socket: it declares no port.
                        ListenKind::SequentialPacket => match parsed(&value)? {
                            ListenAddr::UnixPath(_) | ListenAddr::UnixAbstract(_) => None,
                            _ => continue,
                        },
                        ListenKind::Datagram => parsed(&value).map(|_| None)?,
                        _ => None,
                    };
                    Entry::Port(Port {
                        line: number,
                        stream,
                    })
                }
            };
            entries.push(entry);
        }
        Ok(Source {
            label: label.to_owned(),
            entries,
        })
    }

    /// The name this file gives its own ports: its last `FileDescriptorName=`.
    fn own_name(&self) -> Option<&str> {
        self.entries.iter().rev().find_map(|e| match e {
            Entry::FdName(name) => Some(name.as_deref()),
            _ => None,
        })?
    }
}

/// Where one passed fd's name came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// Its name: the `FileDescriptorName=` of the file that declares it.
    pub name: String,
    /// That file (a [`Source::label`]).
    pub source: String,
}

/// The merged port list (with the file each port comes from) and the
/// unit's resulting `FileDescriptorName`, as systemd computes them.
fn merge(sources: &[Source]) -> (Vec<(usize, &Port)>, Option<&str>) {
    let mut ports = Vec::new();
    let mut fdname = None;
    for (i, source) in sources.iter().enumerate() {
        for entry in &source.entries {
            match entry {
                Entry::Port(port) => ports.push((i, port)),
                Entry::Reset => ports.clear(),
                Entry::FdName(name) => fdname = name.as_deref(),
            }
        }
    }
    (ports, fdname)
}

/// The `FileDescriptorName` systemd gives the unit's fds, as its files say;
/// `None`: the unit's name.
pub fn effective_name(sources: &[Source]) -> Option<&str> {
    merge(sources).1
}

/// Whether a stream `Listen*=` line of the unit declares `addr`.
pub fn declares(
    sources: &[Source],
    addr: &SockAddr,
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> bool {
    merge(sources)
        .0
        .iter()
        .any(|(_, p)| p.stream.as_ref().is_some_and(|a| a.matches(addr, ifindex)))
}

/// Decides the name of each fd passed under `passed_name` by socket unit
/// `unit` (`fds`: their bound addresses, in the order passed), from the
/// unit's files in systemd's order. Refuses, naming the unit, the address
/// and the files, whenever the files do not say one thing.
pub fn resolve(
    unit: &str,
    passed_name: &str,
    fds: &[SockAddr],
    sources: &[Source],
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Result<Vec<Resolved>, String> {
    let (ports, fdname) = merge(sources);
    let mut with_ports: Vec<usize> = ports.iter().map(|&(i, _)| i).collect();
    with_ports.dedup();
    let say = Refusal {
        unit,
        sources,
        with_ports: &with_ports,
    };
    let effective = fdname.unwrap_or(unit);
    if effective != passed_name {
        return Err(say.refuse(format!(
            "systemd passed the name {passed_name:?} but the unit's files say {effective:?}; \
             were they changed without `systemctl --user daemon-reload`?"
        )));
    }
    if ports.len() != fds.len() {
        return Err(say.refuse(format!(
            "systemd passed {} sockets named {passed_name:?} but the unit's files declare {} ports",
            fds.len(),
            ports.len()
        )));
    }
    let unnamed: Vec<usize> = with_ports
        .iter()
        .copied()
        .filter(|&i| sources[i].own_name().is_none())
        .collect();
    if !unnamed.is_empty() && unnamed.len() < with_ports.len() {
        return Err(format!(
            "{unit}: {} declares sockets without a FileDescriptorName of its own while other files name theirs ({})",
            say.files(&unnamed),
            say.files(&with_ports)
        ));
    }
    fds.iter()
        .zip(&ports)
        .map(|(fd, &(at, port))| {
            let source = place(fd, at, port, &ports, &say, ifindex)?;
            Ok(Resolved {
                name: sources[source].own_name().unwrap_or(passed_name).to_owned(),
                source: sources[source].label.clone(),
            })
        })
        .collect()
}

/// How a refusal names the unit and its files.
struct Refusal<'a> {
    unit: &'a str,
    sources: &'a [Source],
    /// The files with Listen lines.
    with_ports: &'a [usize],
}

impl Refusal<'_> {
    fn files(&self, list: &[usize]) -> String {
        let labels: Vec<&str> = list
            .iter()
            .map(|&i| self.sources[i].label.as_str())
            .collect();
        if labels.is_empty() {
            "no Listen lines".to_owned()
        } else {
            labels.join(", ")
        }
    }

    fn refuse(&self, what: String) -> String {
        format!("{}: {what} ({})", self.unit, self.files(self.with_ports))
    }
}

/// The file that declares the socket `fd`, passed where the Listen line
/// `port` of file `at` stands: by its address, and by its place, which
/// must agree.
fn place(
    fd: &SockAddr,
    at: usize,
    port: &Port,
    ports: &[(usize, &Port)],
    say: &Refusal<'_>,
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> Result<usize, String> {
    let mut declaring: Vec<usize> = ports
        .iter()
        .filter(|(_, p)| p.stream.as_ref().is_some_and(|a| a.matches(fd, ifindex)))
        .map(|&(i, _)| i)
        .collect();
    declaring.dedup();
    let source = match declaring[..] {
        [] => return Err(say.refuse(format!("{fd} is declared by no Listen line"))),
        [one] => one,
        _ => {
            return Err(format!(
                "{}: {fd} is declared by more than one file ({})",
                say.unit,
                say.files(&declaring)
            ));
        }
    };
    let here = port.stream.as_ref().is_some_and(|a| a.matches(fd, ifindex));
    if source != at || !here {
        return Err(say.refuse(format!(
            "{fd} is declared in {} but was passed where {} line {} is",
            say.sources[source].label, say.sources[at].label, port.line
        )));
    }
    Ok(source)
}

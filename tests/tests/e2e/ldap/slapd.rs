//! A real OpenLDAP server for the tests: `slapd` with a throwaway configuration (mdb backend;
//! core, cosine, nis and inetorgperson schemas) in a temporary directory, loaded with
//! `slapadd`, listening on loopback ports chosen for it (plain LDAP with StartTLS, and LDAPS,
//! with a certificate of a test CA). `ldapmodify` (ldap-utils) changes entries while it runs.
//!
//! The directory: `dc=example,dc=org` with people alice (group operators), bob (group
//! viewers), carol (in no group entry, but her `seeAlso` attribute names operators, which the
//! tests read as a `memberOf`) and `a*b` (a user whose name needs escaping), and the service
//! account `cn=mqtt,ou=services` that the broker searches as; only it may read the groups, so
//! a search that ran as a user (after a user's bind) would find none. slapd is required: a machine
//! without it fails the tests (CI installs it), it never skips them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::certs::Ca;

pub const SUFFIX: &str = "dc=example,dc=org";
pub const ROOT_DN: &str = "cn=admin,dc=example,dc=org";
pub const ROOT_PW: &str = "root-secret";
pub const SERVICE_DN: &str = "cn=mqtt,ou=services,dc=example,dc=org";
pub const SERVICE_PW: &str = "service-secret";

const DATA: &str = "\
dn: dc=example,dc=org
objectClass: dcObject
objectClass: organization
o: Example
dc: example

dn: ou=people,dc=example,dc=org
objectClass: organizationalUnit
ou: people

dn: ou=groups,dc=example,dc=org
objectClass: organizationalUnit
ou: groups

dn: ou=services,dc=example,dc=org
objectClass: organizationalUnit
ou: services

dn: cn=mqtt,ou=services,dc=example,dc=org
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: mqtt
userPassword: service-secret

dn: uid=alice,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: alice
cn: Alice
sn: Liddell
userPassword: alice-pw

dn: uid=bob,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: bob
cn: Bob
sn: Builder
userPassword: bob-pw

dn: uid=carol,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: carol
cn: Carol
sn: Singer
seeAlso: cn=operators,ou=groups,dc=example,dc=org
userPassword: carol-pw

dn: uid=a*b,ou=people,dc=example,dc=org
objectClass: inetOrgPerson
uid: a*b
cn: Star
sn: Star
userPassword: star-pw

dn: cn=operators,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: operators
member: uid=alice,ou=people,dc=example,dc=org
member: cn=admin,dc=example,dc=org

dn: cn=viewers,ou=groups,dc=example,dc=org
objectClass: groupOfNames
cn: viewers
member: uid=bob,ou=people,dc=example,dc=org
member: uid=alice,ou=people,dc=example,dc=org
";

/// A running slapd (killed when dropped).
pub struct Slapd {
    dir: tempfile::TempDir,
    pub port: u16,
    pub tls_port: u16,
    /// The CA that issued the server's certificate (PEM file).
    pub ca_file: PathBuf,
    child: Option<Child>,
}

/// The path of an OpenLDAP server program (Debian puts them in /usr/sbin, which a user's PATH
/// may lack).
fn program(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        return sbin;
    }
    PathBuf::from(name)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Slapd {
    /// Writes the configuration and the entries, and starts the server.
    pub fn start() -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("db")).unwrap();
        let ca = Ca::new("moat ldap test CA");
        let server = ca.server(&[]);
        let ca_file = root.join("ca.pem");
        std::fs::write(&ca_file, ca.cert_pem()).unwrap();
        std::fs::write(root.join("server.pem"), &server.cert_pem).unwrap();
        std::fs::write(root.join("server.key"), &server.key_pem).unwrap();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             pidfile {root}/slapd.pid\n\
             argsfile {root}/slapd.args\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             TLSCACertificateFile {root}/ca.pem\n\
             TLSCertificateFile {root}/server.pem\n\
             TLSCertificateKeyFile {root}/server.key\n\
             database mdb\n\
             maxsize 16777216\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ROOT_DN}\"\n\
             rootpw {ROOT_PW}\n\
             directory {root}/db\n\
             access to attrs=userPassword by self write by anonymous auth by * none\n\
             access to dn.subtree=\"ou=groups,{SUFFIX}\" by dn.exact=\"{SERVICE_DN}\" read by * none\n\
             access to * by users read by * none\n",
            root = root.display()
        );
        std::fs::write(root.join("slapd.conf"), conf).unwrap();
        std::fs::write(root.join("data.ldif"), DATA).unwrap();
        let out = Command::new(program("slapadd"))
            .arg("-f")
            .arg(root.join("slapd.conf"))
            .arg("-l")
            .arg(root.join("data.ldif"))
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run slapadd: {e} (install the Debian packages slapd and ldap-utils)")
            });
        assert!(
            out.status.success(),
            "slapadd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut slapd = Slapd {
            dir,
            port: free_port(),
            tls_port: free_port(),
            ca_file,
            child: None,
        };
        slapd.run();
        slapd
    }

    /// `ldap://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// `ldaps://127.0.0.1:TLS_PORT`.
    pub fn tls_url(&self) -> String {
        format!("ldaps://127.0.0.1:{}", self.tls_port)
    }

    /// Starts slapd on its ports and waits until it accepts connections.
    fn run(&mut self) {
        let root = self.dir.path();
        let log = std::fs::File::create(root.join("slapd.log")).unwrap();
        let child = Command::new(program("slapd"))
            .arg("-f")
            .arg(root.join("slapd.conf"))
            .arg("-h")
            .arg(format!(
                "ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/",
                self.port, self.tls_port
            ))
            // Debug level 0: stays in the foreground, logs nothing but errors.
            .args(["-d", "0"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run slapd: {e} (install the Debian packages slapd and ldap-utils)")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = [self.port, self.tls_port]
                .iter()
                .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "slapd exited ({status}): {}",
                    std::fs::read_to_string(root.join("slapd.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "slapd did not start within 10 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (the directory is down until [`Slapd::restart`]).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same ports, with the same entries.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    /// Applies `ldif` (changetype records) with `ldapmodify` as the root DN.
    pub fn modify(&self, ldif: &str) {
        use std::io::Write;
        let mut child = Command::new("ldapmodify")
            .args(["-x", "-H", &self.url(), "-D", ROOT_DN, "-w", ROOT_PW])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run ldapmodify (install the Debian package ldap-utils)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ldapmodify failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.kill();
    }
}

"""Certificates for the TLS tests, made at test time with `cryptography` (nothing committed):
a CA, a server certificate for 127.0.0.1 and localhost, a client certificate, and the same
from a second, unrelated CA.
"""
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key():
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Prism tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path, data):
    path.write_bytes(data)
    path.chmod(0o600)
    return path


class Authority:
    """A CA that issues leaf certificates into `directory`."""

    def __init__(self, directory, name):
        self.directory = Path(directory)
        self.name = name
        self.key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name)).issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.cert_path = _write(self.directory / f"{name}-ca.pem", self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, stem, common_name, dns=(), ips=(), server=True, days=2):
        """A leaf certificate and its key as PEM files: (cert_path, key_path)."""
        key = _key()
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
        )
        names = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = _write(self.directory / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))
        key_path = _write(self.directory / f"{stem}-key.pem", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return cert_path, key_path


class PKI:
    """Everything the TLS tests need, as file paths."""

    def __init__(self, directory):
        directory = Path(directory)
        self.ca = Authority(directory, "prism")
        self.other_ca = Authority(directory, "other")
        self.server_cert, self.server_key = self.ca.issue("server", "processor", dns=["localhost"], ips=["127.0.0.1"])
        # Only a DNS name: reached as 127.0.0.1 its name cannot match (swift-nio-ssl also
        # accepts a certificate whose IP SANs hold the address connected to, whatever the name).
        self.named_server_cert, self.named_server_key = self.ca.issue("named-server", "processor", dns=["localhost"])
        # The name compose gives the processor service, as a DNS name only.
        self.service_cert, self.service_key = self.ca.issue("service", "processor", dns=["processor"])
        self.client_cert, self.client_key = self.ca.issue("client", "prism-gateway", server=False)
        self.other_client_cert, self.other_client_key = self.other_ca.issue("other-client", "intruder", server=False)
        self.other_server_cert, self.other_server_key = self.other_ca.issue("other-server", "impostor",
                                                                            dns=["localhost"], ips=["127.0.0.1"])

    @property
    def ca_cert(self):
        return self.ca.cert_path

    @property
    def other_ca_cert(self):
        return self.other_ca.cert_path

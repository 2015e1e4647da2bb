public import Foundation

/// Where and how to reach an S3-compatible bucket.
public struct S3Configuration: Sendable {
    /// e.g. `https://s3.eu-west-1.amazonaws.com` or `http://127.0.0.1:8333`.
    public var endpoint: String
    public var region: String = "us-east-1"
    public var bucket: String
    /// Prepended to every key, e.g. `prism/` (empty for none).
    public var keyPrefix: String = ""
    /// `https://endpoint/bucket/key` (true) or `https://bucket.endpoint/key` (false).
    public var pathStyle: Bool = true
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String? = nil
    /// What manifest URLs start with, e.g. a CDN: `https://cdn.example.com`. Default: the
    /// object's S3 URL.
    public var publicBaseURL: String? = nil
    /// Longest time for one write (PUT, DELETE). An upload's own deadline cuts it shorter.
    public var requestTimeout: Duration = .seconds(30)
    /// Longest time for one read (GET, HEAD, list): a manifest is small, and an API read
    /// should fail fast when the store hangs.
    public var readTimeout: Duration = .seconds(5)

    public init(endpoint: String, bucket: String, accessKeyID: String, secretAccessKey: String) {
        self.endpoint = endpoint
        self.bucket = bucket
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
    }

    /// Credentials from the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
    /// AWS_SESSION_TOKEN); nil when the first two are not both set.
    public static func credentialsFromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> (String, String, String?)? {
        guard let key = environment["AWS_ACCESS_KEY_ID"], !key.isEmpty,
              let secret = environment["AWS_SECRET_ACCESS_KEY"], !secret.isEmpty else { return nil }
        let token = environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 }
        return (key, secret, token)
    }
}

/// Objects in an S3 bucket, over libcurl with its built-in AWS Signature V4.
public final class S3Store: ObjectStore {
    public var signsContent: Bool { true }

    let config: S3Configuration
    let curl: CurlDriver
    private let base: URLComponents

    public init(configuration: S3Configuration, curl: CurlDriver) throws(StorageError) {
        guard var components = URLComponents(string: configuration.endpoint), let host = components.host, components.scheme != nil else {
            throw StorageError("The S3 endpoint is not a URL.", detail: configuration.endpoint)
        }
        if !configuration.pathStyle {
            components.host = "\(configuration.bucket).\(host)"
        }
        components.path = ""
        self.base = components
        self.config = configuration
        self.curl = curl
    }

    /// The request URL for a key (nil key: the bucket itself).
    func objectURL(_ key: String?, query: String? = nil) -> String {
        var path = self.config.pathStyle ? "/\(self.config.bucket)" : ""
        if let key {
            path += "/" + (self.config.keyPrefix + key).split(separator: "/", omittingEmptySubsequences: false)
                .map { Self.encode(String($0)) }.joined(separator: "/")
        } else if !self.config.pathStyle {
            path = "/"
        }
        var url = self.base.string! + path
        if let query { url += "?" + query }
        return url
    }

    /// RFC 3986 unreserved characters stay; everything else is percent-encoded (as SigV4 wants).
    static func encode(_ text: String) -> String {
        var allowed = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        allowed.remove(charactersIn: "")
        return text.addingPercentEncoding(withAllowedCharacters: allowed) ?? text
    }

    private func send(_ method: String, _ url: String, body: Data? = nil, sha256: Data? = nil, headers: [String] = []) async throws(StorageError) -> CurlDriver.Response {
        let payload = body ?? Data()
        var all = headers
        // libcurl 7.88 signs with this header when it is present, and S3 requires it.
        all.append("x-amz-content-sha256: \(sha256.map { Digest.hex($0) } ?? Digest.sha256Hex(payload))")
        if let token = self.config.sessionToken { all.append("x-amz-security-token: \(token)") }
        var timeout = method == "GET" || method == "HEAD" ? self.config.readTimeout : self.config.requestTimeout
        if let deadline = StorageDeadline.current {
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .milliseconds(1) else {
                throw StorageError("The object store call was not made: its deadline had passed.", detail: "\(method) after the deadline")
            }
            timeout = min(timeout, remaining)
        }
        let request = CurlDriver.Request(
            method: method, url: url, headers: all, body: body,
            sigV4: ("aws:amz:\(self.config.region):s3", "\(self.config.accessKeyID):\(self.config.secretAccessKey)"),
            timeout: timeout
        )
        do {
            return try await self.curl.perform(request)
        } catch is CancellationError {
            // Not a storage failure: the caller's task was cancelled (deadline, client gone).
            throw StorageError.cancelled
        } catch {
            throw StorageError("The object store could not be reached.", detail: "\(error)")
        }
    }

    private func failure(_ what: String, _ response: CurlDriver.Response) -> StorageError {
        let code = Self.xmlValues("Code", in: response.body).first ?? "-"
        return StorageError("The object store refused to \(what).", detail: "HTTP \(response.status) \(code)")
    }

    /// Creates the bucket if it does not exist (for development and compose setups).
    public func ensureBucket() async throws(StorageError) {
        let head = try await self.send("HEAD", self.objectURL(nil))
        if head.status == 200 { return }
        var body: Data? = nil
        if self.config.region != "us-east-1" {
            body = Data("<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><LocationConstraint>\(self.config.region)</LocationConstraint></CreateBucketConfiguration>".utf8)
        }
        let created = try await self.send("PUT", self.objectURL(nil), body: body)
        guard (200..<300).contains(created.status) || created.status == 409 else {
            throw self.failure("create the bucket", created)
        }
    }

    public func put(key: String, body: Data, contentType: String, cacheControl: String, options: PutOptions) async throws(StorageError) -> String {
        var headers = ["Content-Type: \(contentType)", "Cache-Control: \(cacheControl)"]
        // The processor's digest of what it encoded: S3 refuses a body that arrives different.
        if let md5 = options.md5 { headers.append("Content-MD5: \(md5.base64EncodedString())") }
        let response = try await self.send("PUT", self.objectURL(key), body: body, sha256: options.sha256, headers: headers)
        guard (200..<300).contains(response.status) else { throw self.failure("store an object", response) }
        return response.etag ?? options.md5.map { "\"\(Digest.hex($0))\"" } ?? (options.entityTag ? "\"\(Digest.md5Hex(body))\"" : "")
    }

    public func get(key: String) async throws(StorageError) -> Data? {
        let response = try await self.send("GET", self.objectURL(key))
        if response.status == 404 { return nil }
        guard (200..<300).contains(response.status) else { throw self.failure("return an object", response) }
        return response.body
    }

    public func delete(keys: [String]) async throws(StorageError) {
        // A few objects per image: parallel single deletes are simpler than DeleteObjects
        // (which needs Content-MD5) and as fast.
        let results = await withTaskGroup(of: StorageError?.self) { group in
            for key in keys {
                group.addTask {
                    do {
                        let response = try await self.send("DELETE", self.objectURL(key))
                        guard (200..<300).contains(response.status) || response.status == 404 else {
                            return self.failure("delete an object", response)
                        }
                        return nil
                    } catch {
                        return error as? StorageError
                    }
                }
            }
            var errors: [StorageError] = []
            for await error in group { if let error { errors.append(error) } }
            return errors
        }
        if let first = results.first { throw first }
    }

    public func list(prefix: String) async throws(StorageError) -> [String] {
        var keys: [String] = []
        var token: String? = nil
        repeat {
            var query = "list-type=2&prefix=\(Self.encode(self.config.keyPrefix + prefix))"
            if let token { query += "&continuation-token=\(Self.encode(token))" }
            let response = try await self.send("GET", self.objectURL(nil, query: query))
            guard response.status == 200 else { throw self.failure("list objects", response) }
            keys += Self.xmlValues("Key", in: response.body).map { String($0.dropFirst(self.config.keyPrefix.count)) }
            token = Self.xmlValues("IsTruncated", in: response.body).first == "true"
                ? Self.xmlValues("NextContinuationToken", in: response.body).first : nil
        } while token != nil
        return keys
    }

    public func url(for key: String) -> String {
        if let base = self.config.publicBaseURL {
            let trimmed = base.hasSuffix("/") ? String(base.dropLast()) : base
            return "\(trimmed)/\(self.config.keyPrefix)\(key)"
        }
        return self.objectURL(key)
    }

    /// The text of every `<name>...</name>` element in an S3 XML answer (S3's XML is flat
    /// enough that this needs no parser).
    static func xmlValues(_ name: String, in body: Data) -> [String] {
        let text = String(decoding: body, as: UTF8.self)
        var values: [String] = []
        var rest = text[...]
        while let open = rest.range(of: "<\(name)>"), let close = rest.range(of: "</\(name)>", range: open.upperBound..<rest.endIndex) {
            values.append(Self.unescape(String(rest[open.upperBound..<close.lowerBound])))
            rest = rest[close.upperBound...]
        }
        return values
    }

    static func unescape(_ text: String) -> String {
        text.replacingOccurrences(of: "&lt;", with: "<").replacingOccurrences(of: "&gt;", with: ">")
            .replacingOccurrences(of: "&quot;", with: "\"").replacingOccurrences(of: "&apos;", with: "'")
            .replacingOccurrences(of: "&amp;", with: "&")
    }
}

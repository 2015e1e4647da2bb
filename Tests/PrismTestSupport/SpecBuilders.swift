public import PrismProto

// MARK: Spec builders

public func variant(_ name: String, _ operations: [Prism_V1_Operation] = [], format: Prism_V1_Format = .jpeg, quality: UInt32 = 0) -> Prism_V1_VariantSpec {
    var spec = Prism_V1_VariantSpec()
    spec.name = name
    spec.operations = operations
    spec.output.format = format
    spec.output.quality = quality
    return spec
}

public func resize(_ width: UInt32, _ height: UInt32, fit: Prism_V1_Fit = .cover, withoutEnlargement: Bool = false, position: Prism_V1_Gravity = .centre) -> Prism_V1_Operation {
    var op = Prism_V1_Operation()
    op.resize.width = width
    op.resize.height = height
    op.resize.fit = fit
    op.resize.withoutEnlargement = withoutEnlargement
    op.resize.position = position
    return op
}

public func blur(_ sigma: Float) -> Prism_V1_Operation {
    var op = Prism_V1_Operation()
    op.blur.sigma = sigma
    return op
}

public func crop(_ width: UInt32, _ height: UInt32, gravity: Prism_V1_Gravity) -> Prism_V1_Operation {
    var op = Prism_V1_Operation()
    op.crop.width = width
    op.crop.height = height
    op.crop.gravity = gravity
    return op
}

public func extract(_ left: UInt32, _ top: UInt32, _ width: UInt32, _ height: UInt32) -> Prism_V1_Operation {
    var op = Prism_V1_Operation()
    op.extract.left = left
    op.extract.top = top
    op.extract.width = width
    op.extract.height = height
    return op
}

public func rotate(_ angle: UInt32) -> Prism_V1_Operation {
    var op = Prism_V1_Operation()
    op.rotate.angle = angle
    return op
}


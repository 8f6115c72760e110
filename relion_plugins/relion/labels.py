"""RELION metadata labels and their value types.

The table below lists every label that RELION 4.0 and 5.0 define (``src/metadata_label.h``), grouped
by the type RELION parses the value as. Vector-valued labels (written as ``[a,b,c]``) are strings here.
Labels that are not in the table keep their values; their type is inferred per column
(:func:`infer_type`), so a column of ``001``-style values stays text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

INT = "int"
DOUBLE = "double"
BOOL = "bool"
STRING = "string"

# numpy dtype used for a column of each type; strings are kept as ``object`` explicitly because
# pandas >= 3 would otherwise pick its own string dtype, which differs between versions.
DTYPES: dict[str, np.dtype] = {
    INT: np.dtype("int64"),
    DOUBLE: np.dtype("float64"),
    BOOL: np.dtype("bool"),
    STRING: np.dtype("object"),
}

# fmt: off
_INT_LABELS = """
rlnAdaptiveOversampleOrder rlnAreaId rlnAutoLocalSearchesHealpixOrder rlnAverageNrOfFrames
rlnBeamTiltClass rlnBodyKeepFixed rlnBodyRotateRelativeTo rlnClassIndex rlnClassNumber
rlnCoarseImageSize rlnCurrentImageSize rlnCurrentIteration rlnDataDimensionality rlnDataType
rlnEERGrouping rlnEERUpsampling rlnFourierSpaceInterpolator rlnGradEmIters rlnGradSubsetOrder
rlnGradSuspendFinerSamplingIter rlnGradSuspendLocalSamplingIter rlnGroupNrParticles rlnGroupNumber
rlnHasLargeSizeIncreaseIterationsAgo rlnHealpixOrder rlnHealpixOrderOriginal rlnHelicalTubeID
rlnImageDimensionality rlnImageId rlnImageSize rlnImageSizeX rlnImageSizeY rlnImageSizeZ
rlnIncrementImageSize rlnIsSelected rlnJobType rlnJoboptionType rlnMaxNumberOfPooledParticles
rlnMaximumCoarseImageSize rlnMaximumSignificantPoses rlnMicrographEndFrame rlnMicrographFrameNumber
rlnMicrographId rlnMicrographStartFrame rlnMinRadiusNnInterpolation rlnMotionModelCoeffsIdx
rlnMotionModelVersion rlnMovieFrameNumber rlnMovieFramesRunningAverage rlnNrBodies rlnNrClasses
rlnNrGroups rlnNrHelicalAsymUnits rlnNrHelicalNStart rlnNrOfFrames rlnNrOfSignificantSamples
rlnNrOpticsGroups rlnNumberOfIterWithoutChangingAssignments rlnNumberOfIterWithoutResolutionGain
rlnNumberOfIterations rlnOpticsGroup rlnOpticsGroupNrParticles rlnOpticsGroupNumber
rlnOrientationalPriorMode rlnOrientationsID rlnOriginalImageSize rlnParticleId rlnParticleNumber
rlnParticleSelectionType rlnPipeLineJobCounter rlnPipeLineNodeType rlnPipeLineNodeTypeLabelDepth
rlnPipeLineProcessStatus rlnPipeLineProcessType rlnProteinArea rlnRadiusMaskExpImages rlnRadiusMaskMap
rlnRandomSeed rlnRandomSubset rlnReferenceDimensionality rlnSchemeEdgeNumber rlnSelected
rlnSgdFinalSubsetSize rlnSgdInitialSubsetSize rlnSgdMaxSubsets rlnSgdSigma2FudgeHalflife
rlnSgdSubsetSize rlnSgdWriteEverySubset rlnSmallestChangesClasses rlnSolventArea rlnSortedIndex
rlnSpectralIndex rlnTomoDeformationGridSizeX rlnTomoDeformationGridSizeY rlnTomoFrameCount
rlnTomoManifoldIndex rlnTomoParticleId rlnTomoSizeX rlnTomoSizeY rlnTomoSizeZ rlnTomoTiltMovieFrameCount
rlnTomoTiltMovieIndex rlnWidthMaskEdge
"""

_DOUBLE_LABELS = """
rlnAccumMotionEarly rlnAccumMotionLate rlnAccumMotionTotal rlnAccuracyRotations rlnAccuracyTranslations
rlnAccuracyTranslationsAngst rlnAdaptiveOversampleFraction rlnAmplitudeContrast
rlnAmplitudeCorrelationMaskedMaps rlnAmplitudeCorrelationUnmaskedMaps rlnAnglePsi rlnAnglePsiFlipRatio
rlnAnglePsiPrior rlnAngleRot rlnAngleRotFlipRatio rlnAngleRotPrior rlnAngleTilt rlnAngleTiltPrior
rlnAngstromResolution rlnAreTomoTiltAxisScore rlnAreTomoTiltangleOffset rlnAutopickFigureOfMerit
rlnAvailableMemory rlnAveragePmax rlnAverageValue rlnBeamTiltX rlnBeamTiltY rlnBestResolutionThusFar
rlnBfactorUsedForSharpening rlnBodyRotateDirectionX rlnBodyRotateDirectionY rlnBodyRotateDirectionZ
rlnBodySigmaAngles rlnBodySigmaOffset rlnBodySigmaOffsetAngst rlnBodySigmaPsi rlnBodySigmaRot
rlnBodySigmaTilt rlnCenteredCoordinateXAngst rlnCenteredCoordinateYAngst rlnCenteredCoordinateZAngst
rlnChangesOptimalClasses rlnChangesOptimalOffsets rlnChangesOptimalOrientations rlnChromaticAberration
rlnCircleMaskedKurt rlnCircleMaskedMean rlnCircleMaskedSkew rlnCircleMaskedStddev rlnClassDistribution
rlnClassPriorOffsetX rlnClassPriorOffsetY rlnClassScore rlnConvergenceCone rlnCoordinateX rlnCoordinateY
rlnCoordinateZ rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps rlnCorrelationFitGuinierPlot
rlnCtfAstigmatism rlnCtfBfactor rlnCtfBfactorPerElectronDose rlnCtfFigureOfMerit rlnCtfIceRingDensity
rlnCtfMaxResolution rlnCtfScalefactor rlnCtfValidationScore rlnCtfValue rlnCurrentResolution
rlnDefocusAngle rlnDefocusU rlnDefocusV rlnDetectorPixelSize rlnDiff2RandomHalves
rlnDifferentialPhaseResidualMaskedMaps rlnDifferentialPhaseResidualUnmaskedMaps rlnEdgeSignal
rlnEnergyLoss rlnEstimatedResolution rlnFftKurt rlnFftMean rlnFftSkew rlnFftStddev rlnFinalResolution
rlnFittedInterceptGuinierPlot rlnFittedSlopeGuinierPlot rlnFourierCompleteness
rlnFourierShellCorrelation rlnFourierShellCorrelationCorrected rlnFourierShellCorrelationMaskedMaps
rlnFourierShellCorrelationParticleMaskFraction rlnFourierShellCorrelationParticleMolWeight
rlnFourierShellCorrelationUnmaskedMaps rlnGoldStandardFsc rlnGradCurrentStepsize rlnGroupScaleCorrection
rlnHelicalCentralProportion rlnHelicalMaskTubeInnerDiameter rlnHelicalMaskTubeOuterDiameter
rlnHelicalOffsetStep rlnHelicalRise rlnHelicalRiseInitial rlnHelicalRiseInitialStep rlnHelicalRiseMax
rlnHelicalRiseMin rlnHelicalSigmaDistance rlnHelicalTrackLength rlnHelicalTrackLengthAngst
rlnHelicalTubePitch rlnHelicalTwist rlnHelicalTwistInitial rlnHelicalTwistInitialStep rlnHelicalTwistMax
rlnHelicalTwistMin rlnHighresLimitExpectation rlnHighresLimitSGD rlnIMODLeaveOutError
rlnIMODResidualErrorMean rlnIMODResidualErrorStddev rlnImagePixelSize rlnImageWeight rlnInnerCircleKurt
rlnInnerCircleMean rlnInnerCircleSkew rlnInnerCircleStddev rlnJobOptionSliderMax rlnJobOptionSliderMin
rlnJobOptionSliderStep rlnJobScore rlnJoinHalvesUntilThisResolution rlnKullbackLeiblerDivergence
rlnKullbackLeibnerDivergence rlnKurtosisExcessValue rlnLensStability rlnLogAmplitudesIntercept
rlnLogAmplitudesMTFCorrected rlnLogAmplitudesOriginal rlnLogAmplitudesSharpened rlnLogAmplitudesWeighted
rlnLogLikeliContribution rlnLogLikelihood rlnLongitudinalDisplacement rlnLowpassFilteredImageMax
rlnLowpassFilteredImageMean rlnLowpassFilteredImageMin rlnLowpassFilteredImageStddev
rlnLowresLimitExpectation rlnMagMat00 rlnMagMat01 rlnMagMat10 rlnMagMat11 rlnMagnification
rlnMagnificationCorrection rlnMagnificationSearchRange rlnMagnificationSearchStep rlnMatrix_1_1
rlnMatrix_1_2 rlnMatrix_1_3 rlnMatrix_2_1 rlnMatrix_2_2 rlnMatrix_2_3 rlnMatrix_3_1 rlnMatrix_3_2
rlnMatrix_3_3 rlnMaxValueProbDistribution rlnMaximumValue rlnMicrographBinning rlnMicrographDoseRate
rlnMicrographIceThickness rlnMicrographOriginalPixelSize rlnMicrographPixelSize rlnMicrographPreExposure
rlnMicrographShiftX rlnMicrographShiftY rlnMicrographTiltAngle rlnMicrographTiltAxisDirection
rlnMicrographTiltAxisOutOfPlane rlnMinimumValue rlnMolecularWeight rlnMotionModelCoeff rlnMtfValue
rlnNormCorrection rlnNormCorrectionAverage rlnOffsetRange rlnOffsetRangeOriginal rlnOffsetRangeX
rlnOffsetRangeY rlnOffsetRangeZ rlnOffsetStep rlnOffsetStepOriginal rlnOrientationDistribution
rlnOriginX rlnOriginXAngst rlnOriginXPrior rlnOriginXPriorAngst rlnOriginY rlnOriginYAngst
rlnOriginYPrior rlnOriginYPriorAngst rlnOriginZ rlnOriginZAngst rlnOriginZPrior rlnOriginZPriorAngst
rlnOverallAccuracyRotations rlnOverallAccuracyTranslations rlnOverallAccuracyTranslationsAngst
rlnOverallFourierCompleteness rlnPaddingFactor rlnParticleBoxFractionMolecularWeight
rlnParticleBoxFractionSolventMask rlnParticleDiameter rlnParticleFigureOfMerit rlnParticleNr
rlnParticleSelectZScore rlnPerFrameCumulativeWeight rlnPerFrameRelativeWeight rlnPhaseShift rlnPixelSize
rlnPredictedClassScore rlnProteinCAR rlnProteinEntropy rlnProteinKurt rlnProteinMean rlnProteinSkew
rlnProteinStddev rlnProteinSum rlnPsiStep rlnPsiStepOriginal rlnRandomiseFrom rlnReferenceSigma2
rlnReferenceSpectralPower rlnReferenceTau2 rlnRelativeResolution rlnRelativeSignalIntensity
rlnResolution rlnResolutionInversePixel rlnResolutionSquared rlnRingKurt rlnRingMean rlnRingSkew
rlnRingStddev rlnSamplingPerturbFactor rlnSamplingPerturbInstance rlnSamplingRate rlnSamplingRateX
rlnSamplingRateY rlnSamplingRateZ rlnScatteredSignal rlnSchemeFloatVariableResetValue
rlnSchemeFloatVariableValue rlnSgdClassInactivityThreshold rlnSgdFinalIterationsFraction
rlnSgdFinalResolution rlnSgdInitialIterationsFraction rlnSgdInitialResolution rlnSgdMinimumResolution
rlnSgdMuFactor rlnSgdSigma2FudgeInitial rlnSgdStepsize rlnSigma2Noise rlnSigmaOffsets
rlnSigmaOffsetsAngst rlnSigmaPriorPsiAngle rlnSigmaPriorRotAngle rlnSigmaPriorTiltAngle
rlnSignalToNoiseRatio rlnSkewnessValue rlnSmallestChangesOffsets rlnSmallestChangesOrientations
rlnSolventEntropy rlnSolventKurt rlnSolventMean rlnSolventSkew rlnSolventStddev rlnSolventSum
rlnSpectralOrientabilityContribution rlnSphericalAberration rlnSsnrMap rlnStandardDeviationValue
rlnTau2FudgeArg rlnTau2FudgeFactor rlnTiltAngleLimit rlnTomoDefocusSlope rlnTomoHand rlnTomoIceNormalX
rlnTomoIceNormalY rlnTomoIceNormalZ rlnTomoImportFractionalDose rlnTomoImportOffsetX
rlnTomoImportOffsetY rlnTomoImportOffsetZ rlnTomoNominalDefocus rlnTomoNominalStageTiltAngle
rlnTomoNominalTiltAxisAngle rlnTomoRelativeIceThickness rlnTomoRelativeLuminance
rlnTomoSubtomogramBinning rlnTomoSubtomogramPsi rlnTomoSubtomogramRot rlnTomoSubtomogramTilt
rlnTomoTempPredSquared rlnTomoTempPredTimesObs rlnTomoTiltSeriesPixelSize rlnTomoTomogramBinning
rlnTomoTomogramThickness rlnTomoXShiftAngst rlnTomoXTilt rlnTomoYShiftAngst rlnTomoYTilt rlnTomoZRot
rlnTotalEntropy rlnTransversalDisplacement rlnVoltage rlnWeightedResolution
"""

_BOOL_LABELS = """
rlnAnglePsiFlip rlnBlushNoSpectralTrailing rlnCtfDataAreCtfCorrected rlnCtfDataAreCtfPremultiplied
rlnCtfDataArePhaseFlipped rlnDoAutoRefine rlnDoAutoSampling rlnDoBlush rlnDoCenterClasses
rlnDoCorrectCtf rlnDoCorrectMagnification rlnDoCorrectNorm rlnDoCorrectScale rlnDoExternalReconstruct
rlnDoFastSubsetOptimisation rlnDoGradientRefine rlnDoHelicalRefine rlnDoIgnoreCtfUntilFirstPeak
rlnDoMapEstimation rlnDoOnlyFlipCtfPhases rlnDoRealignMovies rlnDoSkipAlign rlnDoSkipRotate
rlnDoSolventFlattening rlnDoSolventFscCorrection rlnDoSplitRandomHalves rlnDoStochasticEM
rlnDoStochasticGradientDescent rlnDoZeroMask rlnEnabled rlnFixSigmaNoiseEstimates
rlnFixSigmaOffsetEstimates rlnFixTauEstimates rlnGradHasConverged rlnHasConverged
rlnHasHighFscAtResolLimit rlnHelicalKeepTiltPriorFixed rlnHelicalSymmetryLocalRefinement
rlnIgnoreHelicalSymmetry rlnIs3DSampling rlnIs3DTranslationalSampling rlnIsFlip rlnIsHelix
rlnJobIsContinue rlnJobIsTomo rlnRefsAreCtfCorrected rlnSchemeBooleanVariableResetValue
rlnSchemeBooleanVariableValue rlnSchemeEdgeIsFork rlnSchemeJobHasStarted rlnSgdSkipAnneal
rlnTomoSubTomosAre2DStacks rlnUseTooCoarseSampling
"""

_STRING_LABELS = """
rlnAreaName rlnBodyMaskName rlnBodyReferenceName rlnBodyStarFile rlnComment rlnCtfImage
rlnCtfPowerSpectrum rlnEtomoDirectiveFile rlnEvenZernike rlnExperimentalDataStarFile
rlnExtReconsDataImag rlnExtReconsDataReal rlnExtReconsResult rlnExtReconsResultStarfile
rlnExtReconsWeight rlnFourierMask rlnGradMoment1 rlnGradMoment2 rlnGranulo rlnGroupName rlnImageName
rlnImageOriginalName rlnJobOptionDefaultValue rlnJobOptionDirectoryDefault rlnJobOptionFilePattern
rlnJobOptionGUILabel rlnJobOptionHelpText rlnJobOptionMenuOptions rlnJobOptionValue rlnJobOptionVariable
rlnJobTypeLabel rlnLBP rlnLocalSymmetryFile rlnMaskName rlnMicrographCoordinates rlnMicrographDefectFile
rlnMicrographGainName rlnMicrographMetadata rlnMicrographMovieName rlnMicrographName
rlnMicrographNameEven rlnMicrographNameNoDW rlnMicrographNameOdd rlnModelStarFile rlnModelStarFile2
rlnMtfFileName rlnNormalizedFeatureVector rlnOddZernike rlnOpticsGroupName rlnOpticsStarFile
rlnOrientSamplingStarFile rlnOriginalParticleName rlnOutputRootName rlnParticleName
rlnPipeLineEdgeFromNode rlnPipeLineEdgeProcess rlnPipeLineEdgeToNode rlnPipeLineNodeName
rlnPipeLineNodeTypeLabel rlnPipeLineProcessAlias rlnPipeLineProcessName rlnPipeLineProcessStatusLabel
rlnPipeLineProcessTypeLabel rlnPostprocessedMap rlnPostprocessedMapMasked rlnProteinHaralick
rlnProteinLBP rlnReconstructImageName rlnReferenceImage rlnSchemeBooleanVariableName
rlnSchemeCurrentNodeName rlnSchemeEdgeBooleanVariable rlnSchemeEdgeInputNodeName
rlnSchemeEdgeOutputNodeName rlnSchemeEdgeOutputNodeNameIfTrue rlnSchemeEmailAddress
rlnSchemeFloatVariableName rlnSchemeJobMode rlnSchemeJobName rlnSchemeJobNameOriginal rlnSchemeName
rlnSchemeOperatorInput1 rlnSchemeOperatorInput2 rlnSchemeOperatorName rlnSchemeOperatorOutput
rlnSchemeOperatorType rlnSchemeOriginalStartNodeName rlnSchemeStringVariableName
rlnSchemeStringVariableResetValue rlnSchemeStringVariableValue rlnSgdStepsizeScheme rlnSolventHaralick
rlnSolventLBP rlnSolventMask2Name rlnSolventMaskName rlnStarFileMovieParticles rlnSubImageStack
rlnSubImageStarFile rlnSymmetryGroup rlnTau2FudgeScheme rlnTauSpectrumName
rlnTomoDeformationCoefficients rlnTomoDeformationType rlnTomoDenoisedTomogram rlnTomoFiducialsStarFile
rlnTomoImportCtfFindFile rlnTomoImportCtfPlotterFile rlnTomoImportCulledFile rlnTomoImportImodDir
rlnTomoImportOrderList rlnTomoImportParticleFile rlnTomoManifoldParams rlnTomoManifoldType
rlnTomoManifoldsFile rlnTomoName rlnTomoParticleName rlnTomoParticlesFile rlnTomoProjW rlnTomoProjX
rlnTomoProjY rlnTomoProjZ rlnTomoReconstructedTomogram rlnTomoReconstructedTomogramHalf1
rlnTomoReconstructedTomogramHalf2 rlnTomoReferenceFscFile rlnTomoReferenceMap1File
rlnTomoReferenceMap2File rlnTomoReferenceMaskFile rlnTomoTiltMovieFile rlnTomoTiltSeriesName
rlnTomoTiltSeriesStarFile rlnTomoTomogramsFile rlnTomoTrajectoriesFile rlnTomoVisibleFrames
rlnTomogramHProjectionalf2 rlnTomogramProjection rlnTomogramProjectionHalf1 rlnUnfilteredMapHalf1
rlnUnfilteredMapHalf2 rlnZernikeMoments
"""
# fmt: on

# RELION 3.1 schedule labels (renamed to rlnScheme* in 4.0) and a few labels written by tools around
# RELION; listed so that old files read with the right types.
_EXTRA: dict[str, str] = {
    "rlnScheduleName": STRING,
    "rlnScheduleCurrentNodeName": STRING,
    "rlnScheduleOriginalStartNodeName": STRING,
    "rlnScheduleEmailAddress": STRING,
    "rlnScheduleJobNameOriginal": STRING,
    "rlnScheduleJobName": STRING,
    "rlnScheduleJobMode": STRING,
    "rlnScheduleJobHasStarted": BOOL,
    "rlnScheduleOperatorName": STRING,
    "rlnScheduleOperatorType": STRING,
    "rlnScheduleOperatorInput1": STRING,
    "rlnScheduleOperatorInput2": STRING,
    "rlnScheduleOperatorOutput": STRING,
    "rlnScheduleEdgeNumber": INT,
    "rlnScheduleEdgeInputNodeName": STRING,
    "rlnScheduleEdgeOutputNodeName": STRING,
    "rlnScheduleEdgeIsFork": BOOL,
    "rlnScheduleEdgeOutputNodeNameIfTrue": STRING,
    "rlnScheduleEdgeBooleanVariable": STRING,
    "rlnScheduleFloatVariableName": STRING,
    "rlnScheduleFloatVariableValue": DOUBLE,
    "rlnScheduleFloatVariableResetValue": DOUBLE,
    "rlnScheduleBooleanVariableName": STRING,
    "rlnScheduleBooleanVariableValue": BOOL,
    "rlnScheduleBooleanVariableResetValue": BOOL,
    "rlnScheduleStringVariableName": STRING,
    "rlnScheduleStringVariableValue": STRING,
    "rlnScheduleStringVariableResetValue": STRING,
}


def _build() -> dict[str, str]:
    table: dict[str, str] = dict(_EXTRA)
    for kind, names in (
        (INT, _INT_LABELS),
        (DOUBLE, _DOUBLE_LABELS),
        (BOOL, _BOOL_LABELS),
        (STRING, _STRING_LABELS),
    ):
        for name in names.split():
            table[name] = kind
    return table


#: label (without the leading underscore) -> "int" | "double" | "bool" | "string"
LABEL_TYPES: dict[str, str] = _build()


def label_type(label: str) -> str | None:
    """Type of a known RELION label (leading underscore allowed), or None if the label is unknown."""
    return LABEL_TYPES.get(label[1:] if label.startswith("_") else label)


# A plain integer: optional sign, no leading zero (``007`` is an identifier, not a number).
_INT_RE = re.compile(r"[+-]?(?:0|[1-9][0-9]*)")
# A decimal or scientific number, or nan/inf as C's strtod and RELION write them. A leading zero before
# further digits (``007``, ``01.5``) marks an identifier, so such columns stay text: lossless.
_FLOAT_RE = re.compile(
    r"[+-]?(?:(?:(?:0|[1-9][0-9]*)(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)", re.I
)


def infer_type(values: Iterable[str]) -> str:
    """Type of a column of an unknown label: int if every value is a plain integer, else double if
    every value is a number, else string. Leading zeros (``001``) make a string; so does an empty column."""
    kind = INT
    seen = False
    for v in values:
        seen = True
        if kind == INT and _INT_RE.fullmatch(v):
            continue
        if _FLOAT_RE.fullmatch(v):
            kind = DOUBLE
            continue
        return STRING
    return kind if seen else STRING

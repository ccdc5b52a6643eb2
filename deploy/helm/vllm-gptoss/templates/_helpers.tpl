{{/* Names and labels. */}}
{{- define "vllm-gptoss.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "vllm-gptoss.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "vllm-gptoss.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "vllm-gptoss.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "vllm-gptoss.selectorLabels" -}}
app.kubernetes.io/name: {{ include "vllm-gptoss.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "vllm-gptoss.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "vllm-gptoss.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "vllm-gptoss.servedModelName" -}}
{{- default .Values.model.name .Values.model.servedModelName }}
{{- end }}

{{- define "vllm-gptoss.apiKeySecretName" -}}
{{- default (printf "%s-api-key" (include "vllm-gptoss.fullname" .)) .Values.apiKey.existingSecret }}
{{- end }}

{{- define "vllm-gptoss.cacheClaimName" -}}
{{- default (printf "%s-model-cache" (include "vllm-gptoss.fullname" .)) .Values.modelCache.existingClaim }}
{{- end }}

{{/* GPUs one pod asks for: the whole tensor x pipeline world, split over the nodes in multi-node mode. */}}
{{- define "vllm-gptoss.gpusPerPod" -}}
{{- $world := mul (int .Values.parallelism.tensor) (int .Values.parallelism.pipeline) }}
{{- if .Values.multiNode.enabled }}
{{- div $world (int .Values.multiNode.nodes) }}
{{- else }}
{{- $world }}
{{- end }}
{{- end }}

{{- define "vllm-gptoss.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* Replica bound used to refuse a ReadWriteOnce cache shared by several pods. */}}
{{- define "vllm-gptoss.maxPods" -}}
{{- $replicas := int .Values.replicaCount }}
{{- if .Values.autoscaling.keda.enabled }}{{ $replicas = int .Values.autoscaling.keda.maxReplicas }}{{ end }}
{{- if .Values.autoscaling.hpa.enabled }}{{ $replicas = int .Values.autoscaling.hpa.maxReplicas }}{{ end }}
{{- if .Values.multiNode.enabled }}{{ $replicas = mul $replicas (int .Values.multiNode.nodes) }}{{ end }}
{{- $replicas }}
{{- end }}

{{/*
Cross-field checks that values.schema.json cannot express. Each message names the values to change.
Included once from every workload template.
*/}}
{{- define "vllm-gptoss.validate" -}}
{{- $v := .Values }}
{{- if eq (trim $v.model.name) "" }}
{{- fail "model.name is empty: set a Hugging Face repo id (openai/gpt-oss-20b) or an absolute path inside the image" }}
{{- end }}
{{- if and (not $v.image.digest) (or (eq $v.image.tag "") (eq $v.image.tag "latest")) }}
{{- fail (printf "image.tag is %q: pin a version tag (e.g. 0.1.0-vllm0.32.0) or set image.digest; \"latest\" is not reproducible" $v.image.tag) }}
{{- end }}
{{- if and $v.autoscaling.keda.enabled $v.autoscaling.hpa.enabled }}
{{- fail "autoscaling.keda.enabled and autoscaling.hpa.enabled are both true: KEDA creates its own HPA, enable only one" }}
{{- end }}
{{- range $name, $a := dict "keda" $v.autoscaling.keda "hpa" $v.autoscaling.hpa }}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) }}
{{- fail (printf "autoscaling.%s.minReplicas (%d) is larger than autoscaling.%s.maxReplicas (%d)" $name (int $a.minReplicas) $name (int $a.maxReplicas)) }}
{{- end }}
{{- end }}
{{- if eq $v.device "cpu" }}
{{- if $v.multiNode.enabled }}
{{- fail "multiNode.enabled needs device: gpu (vLLM's CPU backend does not span nodes)" }}
{{- end }}
{{- if ne (int $v.parallelism.pipeline) 1 }}
{{- fail (printf "parallelism.pipeline is %d with device: cpu; the CPU preset serves with pipeline 1" (int $v.parallelism.pipeline)) }}
{{- end }}
{{- end }}
{{- if $v.multiNode.enabled }}
{{- $world := mul (int $v.parallelism.tensor) (int $v.parallelism.pipeline) }}
{{- if ne (mod $world (int $v.multiNode.nodes)) 0 }}
{{- fail (printf "multiNode.nodes (%d) must divide parallelism.tensor x parallelism.pipeline (%d x %d = %d): every node runs the same number of GPUs" (int $v.multiNode.nodes) (int $v.parallelism.tensor) (int $v.parallelism.pipeline) $world) }}
{{- end }}
{{- end }}
{{- if and $v.huggingface.offline $v.modelCache.prefetch.enabled }}
{{- fail "huggingface.offline is true but modelCache.prefetch.enabled downloads from the Hub: turn prefetch off and fill the cache beforehand (deploy/README.md, air-gapped)" }}
{{- end }}
{{- if and $v.modelCache.prefetch.enabled (not $v.modelCache.enabled) }}
{{- fail "modelCache.prefetch.enabled needs modelCache.enabled: the init container downloads into the cache volume" }}
{{- end }}
{{- if and $v.modelCache.enabled (not $v.modelCache.existingClaim) (has "ReadWriteOnce" $v.modelCache.accessModes) (not (has "ReadWriteMany" $v.modelCache.accessModes)) }}
{{- $pods := int (include "vllm-gptoss.maxPods" .) }}
{{- if gt $pods 1 }}
{{- fail (printf "modelCache.accessModes is %v but up to %d pods mount the cache: a ReadWriteOnce volume attaches to one node only. Use ReadWriteMany (e.g. NFS, Filestore, EFS) or modelCache.existingClaim" $v.modelCache.accessModes $pods) }}
{{- end }}
{{- end }}
{{- if lt (int $v.probes.startup.maxColdStartSeconds) (int $v.probes.startup.periodSeconds) }}
{{- fail (printf "probes.startup.maxColdStartSeconds (%d) is shorter than one probe period (%d s)" (int $v.probes.startup.maxColdStartSeconds) (int $v.probes.startup.periodSeconds)) }}
{{- end }}
{{- if and $v.server.enableAutoToolChoice (eq $v.server.toolCallParser "") }}
{{- fail "server.enableAutoToolChoice needs server.toolCallParser (openai): vLLM refuses --enable-auto-tool-choice without a parser" }}
{{- end }}
{{- end }}

{{/*
vLLM command line. Call with (dict "root" $ "role" "single|leader|worker").
*/}}
{{- define "vllm-gptoss.command" -}}
{{- if eq .root.Values.server.launcher "api-server-module" }}
- python3
- -m
- vllm.entrypoints.openai.api_server
{{- else }}
- vllm
- serve
{{- end }}
{{- end }}

{{- define "vllm-gptoss.args" -}}
{{- $v := .root.Values }}
{{- if eq $v.server.launcher "api-server-module" }}
- --model
{{- end }}
- {{ $v.model.name | quote }}
{{- if $v.model.revision }}
- --revision
- {{ $v.model.revision | quote }}
{{- end }}
- --served-model-name
- {{ include "vllm-gptoss.servedModelName" .root | quote }}
- --host
- "0.0.0.0"
- --port
- {{ $v.server.port | quote }}
{{- if $v.server.reasoningParser }}
- --reasoning-parser
- {{ $v.server.reasoningParser | quote }}
{{- end }}
{{- if $v.server.toolCallParser }}
- --tool-call-parser
- {{ $v.server.toolCallParser | quote }}
{{- end }}
{{- if $v.server.enableAutoToolChoice }}
- --enable-auto-tool-choice
{{- end }}
{{- if ne (int $v.parallelism.tensor) 1 }}
- --tensor-parallel-size
- {{ $v.parallelism.tensor | quote }}
{{- end }}
{{- if ne (int $v.parallelism.pipeline) 1 }}
- --pipeline-parallel-size
- {{ $v.parallelism.pipeline | quote }}
{{- end }}
{{- if $v.server.dtype }}
- --dtype
- {{ $v.server.dtype | quote }}
{{- end }}
- --gpu-memory-utilization
- {{ $v.server.gpuMemoryUtilization | quote }}
{{- with $v.server.maxModelLen }}
- --max-model-len
- {{ . | quote }}
{{- end }}
{{- with $v.server.maxNumBatchedTokens }}
- --max-num-batched-tokens
- {{ . | quote }}
{{- end }}
{{- with $v.server.maxNumSeqs }}
- --max-num-seqs
- {{ . | quote }}
{{- end }}
{{- if $v.server.enforceEager }}
- --enforce-eager
{{- end }}
{{- if $v.server.shutdownTimeoutSeconds }}
- --shutdown-timeout
- {{ $v.server.shutdownTimeoutSeconds | quote }}
{{- end }}
{{- if $v.multiNode.enabled }}
- --nnodes
- {{ $v.multiNode.nodes | quote }}
- --node-rank
- {{ if eq .role "leader" }}"0"{{ else }}"$(LWS_WORKER_INDEX)"{{ end }}
- --master-addr
- "$(LWS_LEADER_ADDRESS)"
- --master-port
- {{ $v.multiNode.masterPort | quote }}
{{- if eq .role "worker" }}
- --headless
{{- end }}
{{- end }}
{{- range $v.server.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{- define "vllm-gptoss.env" -}}
{{- $v := .root.Values }}
{{- if not $v.server.pluginEnabled }}
- name: VLLM_GPTOSS_DISABLE
  value: "1"
{{- end }}
{{- if not $v.server.usageStats }}
- name: VLLM_NO_USAGE_STATS
  value: "1"
- name: DO_NOT_TRACK
  value: "1"
{{- end }}
{{- if $v.apiKey.enabled }}
- name: VLLM_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "vllm-gptoss.apiKeySecretName" .root }}
      key: {{ $v.apiKey.secretKey }}
{{- end }}
{{- if $v.huggingface.tokenSecret.name }}
- name: HF_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ $v.huggingface.tokenSecret.name }}
      key: {{ $v.huggingface.tokenSecret.key }}
{{- end }}
{{- if or $v.huggingface.offline $v.modelCache.prefetch.enabled }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: TRANSFORMERS_OFFLINE
  value: "1"
{{- end }}
{{- include "vllm-gptoss.cacheEnv" .root }}
{{- if eq $v.device "cpu" }}
- name: VLLM_TARGET_DEVICE
  value: cpu
- name: VLLM_CPU_KVCACHE_SPACE
  value: {{ $v.cpuBackend.kvCacheSpaceGiB | quote }}
{{- with $v.cpuBackend.ompThreadsBind }}
- name: VLLM_CPU_OMP_THREADS_BIND
  value: {{ . | quote }}
{{- end }}
{{- end }}
{{- with $v.server.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Where the Hub cache and the compile caches live: the cache volume, or the pod's scratch space. */}}
{{- define "vllm-gptoss.cacheEnv" -}}
{{- $root := ternary .Values.modelCache.mountPath "/scratch" .Values.modelCache.enabled }}
{{- $compile := ternary $root "/scratch" (and .Values.modelCache.enabled .Values.modelCache.persistCompileCache) }}
- name: HF_HOME
  value: {{ printf "%s/huggingface" $root | quote }}
- name: VLLM_CACHE_ROOT
  value: {{ printf "%s/vllm" $compile | quote }}
- name: TRITON_CACHE_DIR
  value: {{ printf "%s/triton" $compile | quote }}
{{- end }}

{{- define "vllm-gptoss.probe" -}}
httpGet:
  path: {{ .probe.path }}
  port: http
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
{{- if hasKey .probe "maxColdStartSeconds" }}
failureThreshold: {{ div (add (int .probe.maxColdStartSeconds) (sub (int .probe.periodSeconds) 1)) (int .probe.periodSeconds) }}
{{- else }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end }}
{{- end }}

{{/*
Pod template spec shared by the Deployment and both LeaderWorkerSet templates.
Call with (dict "root" $ "role" "single|leader|worker").
*/}}
{{- define "vllm-gptoss.podSpec" -}}
{{- $v := .root.Values }}
{{- $gpus := int (include "vllm-gptoss.gpusPerPod" .root) }}
serviceAccountName: {{ include "vllm-gptoss.serviceAccountName" .root }}
automountServiceAccountToken: false
{{- with $v.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
terminationGracePeriodSeconds: {{ add (int $v.server.shutdownTimeoutSeconds) 30 }}
securityContext:
  {{- toYaml $v.podSecurityContext | nindent 2 }}
{{- if and $v.modelCache.prefetch.enabled (not (hasPrefix "/" $v.model.name)) }}
initContainers:
  - name: prefetch-weights
    image: {{ include "vllm-gptoss.image" .root }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    command:
      - python3
      - -c
      - |
        import os
        from huggingface_hub import snapshot_download
        path = snapshot_download(
            os.environ["MODEL_ID"],
            revision=os.environ.get("MODEL_REVISION") or None,
            ignore_patterns=[p for p in os.environ.get("IGNORE_PATTERNS", "").split(",") if p],
        )
        print(f"prefetch: {os.environ['MODEL_ID']} is in {path}", flush=True)
    env:
      - name: MODEL_ID
        value: {{ $v.model.name | quote }}
      - name: MODEL_REVISION
        value: {{ $v.model.revision | quote }}
      - name: IGNORE_PATTERNS
        value: {{ join "," $v.modelCache.prefetch.ignorePatterns | quote }}
      - name: HF_HOME
        value: {{ printf "%s/huggingface" $v.modelCache.mountPath | quote }}
      {{- if $v.huggingface.tokenSecret.name }}
      - name: HF_TOKEN
        valueFrom:
          secretKeyRef:
            name: {{ $v.huggingface.tokenSecret.name }}
            key: {{ $v.huggingface.tokenSecret.key }}
      {{- end }}
    resources:
      {{- toYaml $v.modelCache.prefetch.resources | nindent 6 }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    volumeMounts:
      - name: model-cache
        mountPath: {{ $v.modelCache.mountPath }}
{{- end }}
containers:
  - name: vllm
    image: {{ include "vllm-gptoss.image" .root }}
    imagePullPolicy: {{ $v.image.pullPolicy }}
    command:
      {{- include "vllm-gptoss.command" . | trim | nindent 6 }}
    args:
      {{- include "vllm-gptoss.args" . | trim | nindent 6 }}
    env:
      {{- include "vllm-gptoss.env" . | trim | nindent 6 }}
    {{- if ne .role "worker" }}
    ports:
      - name: http
        containerPort: {{ $v.server.port }}
        protocol: TCP
    startupProbe:
      {{- include "vllm-gptoss.probe" (dict "probe" $v.probes.startup) | nindent 6 }}
    readinessProbe:
      {{- include "vllm-gptoss.probe" (dict "probe" $v.probes.readiness) | nindent 6 }}
    livenessProbe:
      {{- include "vllm-gptoss.probe" (dict "probe" $v.probes.liveness) | nindent 6 }}
    lifecycle:
      preStop:
        # Let the Service drop this endpoint before vLLM starts draining.
        exec:
          command: ["sleep", "5"]
    {{- end }}
    resources:
      requests:
        {{- with $v.resources.requests }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if and (eq $v.device "gpu") (gt $gpus 0) }}
        {{ $v.gpu.resourceName }}: {{ $gpus | quote }}
        {{- end }}
      limits:
        {{- with $v.resources.limits }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- if and (eq $v.device "gpu") (gt $gpus 0) }}
        {{ $v.gpu.resourceName }}: {{ $gpus | quote }}
        {{- end }}
    securityContext:
      {{- toYaml $v.securityContext | nindent 6 }}
    volumeMounts:
      - name: dshm
        mountPath: /dev/shm
      - name: scratch
        mountPath: /scratch
      - name: tmp
        mountPath: /tmp
      {{- if $v.modelCache.enabled }}
      - name: model-cache
        mountPath: {{ $v.modelCache.mountPath }}
      {{- end }}
volumes:
  - name: dshm
    emptyDir:
      medium: Memory
      sizeLimit: {{ $v.shm.sizeLimit }}
  - name: scratch
    emptyDir: {}
  - name: tmp
    emptyDir: {}
  {{- if $v.modelCache.enabled }}
  - name: model-cache
    persistentVolumeClaim:
      claimName: {{ include "vllm-gptoss.cacheClaimName" .root }}
  {{- end }}
{{- with $v.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $v.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{- define "vllm-gptoss.podAnnotations" -}}
{{- if .Values.monitoring.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.server.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end }}

"""The plain route: the idiomatic PyTorch reference (torchvision-style dataset, DataLoader, tutorial loop,
default Adam) the trainer and the data pipeline are compared against."""
import time

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset

import models
from bench.routes import TrainConfig, cycle
from bench.sizes import BATCH


class PlainCIFAR10(Dataset):
    """What torchvision.datasets.CIFAR10 does per item (HWC uint8 array -> PIL image -> transform), but over
    data already in memory, so the comparison is about building batches, not about reading files."""

    def __init__(self, images_chw: torch.Tensor, labels: torch.Tensor, transform):
        self.data = images_chw.permute(0, 2, 3, 1).numpy()  # torchvision keeps CIFAR-10 as [N, 32, 32, 3]
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        img = Image.fromarray(self.data[i])
        return self.transform(img), self.targets[i]


def plain_loader(images, labels, focus_classes) -> DataLoader:
    """The route a user would write from the paper: PIL transforms, ConcatDataset for the extra copies,
    DataLoader(batch_size=4, shuffle=True, num_workers=0) (no worker processes on a two-core machine)."""
    from torchvision import transforms as T
    normalize = [T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    plain = T.Compose(normalize)
    augmented = T.Compose([T.RandomHorizontalFlip(), T.RandomRotation(10), T.ColorJitter(0.2, 0.2, 0.2), *normalize])
    focus = torch.isin(labels, torch.tensor(focus_classes))
    dataset = ConcatDataset([PlainCIFAR10(images, labels, plain),
                             PlainCIFAR10(images[focus], labels[focus], augmented)])
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=0)


PAPER = TrainConfig()  # the paper's optimizer settings, as every trial uses them


def paper_adam(params, fused: bool | None = None) -> torch.optim.Adam:
    """Adam with the paper's settings; torch's default implementation unless `fused`."""
    return torch.optim.Adam(params, lr=PAPER.lr, betas=(PAPER.beta1, PAPER.beta2), eps=PAPER.eps,
                            weight_decay=PAPER.weight_decay, fused=fused)


def tutorial_step(model, optimizer, criterion, inputs, targets, device) -> float:
    """One step of PyTorch's "Training a Classifier" tutorial loop: the batch moved to the device, contiguous
    tensors, the loss read with .item() (a host sync every step). Nothing is slowed on purpose."""
    inputs, targets = inputs.to(device), targets.to(device)
    optimizer.zero_grad()
    loss = criterion(model(inputs), targets)
    loss.backward()
    optimizer.step()
    return loss.item()


def plain_epoch(model, images, labels, focus_classes, device, seed: int) -> float:
    """Images/s of one epoch the tutorial's way with the paper's optimizer: `plain_loader`, `tutorial_step`,
    torch.optim.Adam with its default implementation (for-loop on CPU, foreach on CUDA)."""
    torch.manual_seed(seed)
    criterion, optimizer = torch.nn.CrossEntropyLoss(), paper_adam(model.parameters())
    model.train()
    seen, t0 = 0, time.perf_counter()
    for inputs, targets in plain_loader(images, labels, focus_classes):
        tutorial_step(model, optimizer, criterion, inputs, targets, device)
        seen += len(targets)
    return seen / (time.perf_counter() - t0)


def plain_step(variant: str, images, labels, focus_classes, device, state: dict | None = None):
    """The plain route as a step callable (`plain_loader` batches, `tutorial_step`), from the checkpoint `state`
    when given (its weights, Adam moments and lr; torch's default Adam kept). `.model`, `.optimizer` its own."""
    torch.manual_seed(0)
    model = models.create_model(variant).to(device).train()
    optimizer = paper_adam(model.parameters())
    if state is not None:
        model.load_state_dict(state["model"])
        saved = state["optimizer"]
        for p, i in zip(model.parameters(), saved["param_groups"][0]["params"]):
            optimizer.state[p] = {key: value.to(device).clone() for key, value in saved["state"][i].items()}
        optimizer.param_groups[0]["lr"] = float(saved["param_groups"][0]["lr"])
    criterion = torch.nn.CrossEntropyLoss()
    batches = cycle(lambda epoch: plain_loader(images, labels, focus_classes))

    def one() -> None:
        tutorial_step(model, optimizer, criterion, *next(batches), device)
    one.model, one.optimizer = model, optimizer
    return one
